//! Money: an exact [`Amount`] in a [`Currency`], and the one rounding rule
//! for display.

use crate::amount::{Amount, AmountError};
use std::fmt;
use std::str::FromStr;

/// An ISO 4217-style currency code: three ASCII capital letters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("currency must be three capital letters (like USD), got {0:?}")]
pub struct CurrencyError(pub String);

impl Currency {
    pub const USD: Currency = Currency(*b"USD");

    /// Decimal places of the currency's minor unit (ISO 4217): 2 for most,
    /// 0 for JPY or KRW, 3 for the dinars.
    pub fn minor_unit_places(&self) -> u32 {
        match self.as_str() {
            "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX" | "UYI" | "VND"
            | "VUV" | "XAF" | "XOF" | "XPF" => 0,
            "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
            _ => 2,
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("constructed from ASCII capitals")
    }
}

impl FromStr for Currency {
    type Err = CurrencyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        if bytes.len() == 3 && bytes.iter().all(u8::is_ascii_uppercase) {
            Ok(Currency([bytes[0], bytes[1], bytes[2]]))
        } else {
            Err(CurrencyError(s.to_owned()))
        }
    }
}

/// On the wire as its code (`"USD"`).
impl serde::Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        code.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MoneyError {
    #[error(transparent)]
    Amount(#[from] AmountError),
    #[error("cannot combine {0} with {1}")]
    CurrencyMismatch(Currency, Currency),
}

/// An amount for people to read: rounded half-even to the currency's minor
/// unit. The one rounding rule for display (summaries, alert texts, invoice
/// lines); stored and summed amounts are never rounded.
pub fn round_for_display(amount: Amount, currency: Currency) -> Amount {
    amount.round_half_even(currency.minor_unit_places())
}

/// An exact amount in a currency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Money {
    pub amount: Amount,
    pub currency: Currency,
}

impl Money {
    pub fn zero(currency: Currency) -> Self {
        Self { amount: Amount::ZERO, currency }
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch(self.currency, other.currency));
        }
        Ok(Money { amount: self.amount.checked_add(other.amount)?, currency: self.currency })
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Amount {
        s.parse().unwrap()
    }

    #[test]
    fn currency_codes_are_three_capitals() {
        assert_eq!("EUR".parse::<Currency>().unwrap().as_str(), "EUR");
        assert!("usd".parse::<Currency>().is_err());
        assert!("USDX".parse::<Currency>().is_err());
    }

    #[test]
    fn display_rounding_is_half_even_to_the_minor_unit() {
        assert_eq!(round_for_display(d("0.125"), Currency::USD), d("0.12"));
        assert_eq!(round_for_display(d("0.135"), Currency::USD), d("0.14"));
        assert_eq!(round_for_display(d("12.5"), "JPY".parse().unwrap()), d("12"));
        assert_eq!(round_for_display(d("1.2345"), "KWD".parse().unwrap()), d("1.234"));
    }

    #[test]
    fn money_refuses_mixed_currencies() {
        let usd = Money { amount: d("1"), currency: Currency::USD };
        let eur = Money { amount: d("1"), currency: "EUR".parse().unwrap() };
        assert!(matches!(usd.checked_add(eur), Err(MoneyError::CurrencyMismatch(..))));
    }
}
