//! Exact money. Amounts are `rust_decimal::Decimal`; arithmetic either is
//! exact or fails. `rust_decimal` silently rounds when a product or sum needs
//! more than 28 fractional digits or 96 bits of mantissa; [`exact_mul`] and
//! [`exact_add`] detect that and refuse, so a cost is never quietly rounded.

use rust_decimal::Decimal;
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
    #[error("{a} × {b} cannot be represented exactly")]
    InexactProduct { a: Decimal, b: Decimal },
    #[error("{a} + {b} cannot be represented exactly")]
    InexactSum { a: Decimal, b: Decimal },
    #[error("cannot combine {0} with {1}")]
    CurrencyMismatch(Currency, Currency),
}

/// `a × b`, exactly, or an error.
pub fn exact_mul(a: Decimal, b: Decimal) -> Result<Decimal, MoneyError> {
    let scale = a.scale() + b.scale();
    match a.checked_mul(b) {
        // A product keeps the sum of the scales unless rust_decimal had to
        // round it to fit; zero may come back with any scale.
        Some(p) if p.scale() == scale || (p.is_zero() && scale <= 28) => Ok(p),
        _ => Err(MoneyError::InexactProduct { a, b }),
    }
}

/// `a + b`, exactly, or an error.
pub fn exact_add(a: Decimal, b: Decimal) -> Result<Decimal, MoneyError> {
    let scale = a.scale().max(b.scale());
    match a.checked_add(b) {
        Some(s) if s.scale() == scale || s.is_zero() => Ok(s),
        _ => Err(MoneyError::InexactSum { a, b }),
    }
}

/// An amount for people to read: rounded half-even to the currency's minor
/// unit. The one rounding rule for display (summaries, alert texts, invoice
/// lines); stored and summed amounts are never rounded.
pub fn round_for_display(amount: Decimal, currency: Currency) -> Decimal {
    amount.round_dp_with_strategy(currency.minor_unit_places(), rust_decimal::RoundingStrategy::MidpointNearestEven)
}

/// An exact amount in a currency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Money {
    pub amount: Decimal,
    pub currency: Currency,
}

impl Money {
    pub fn zero(currency: Currency) -> Self {
        Self { amount: Decimal::ZERO, currency }
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch(self.currency, other.currency));
        }
        Ok(Money { amount: exact_add(self.amount, other.amount)?, currency: self.currency })
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
    use proptest::prelude::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn currency_codes_are_three_capitals() {
        assert_eq!("EUR".parse::<Currency>().unwrap().as_str(), "EUR");
        assert!("usd".parse::<Currency>().is_err());
        assert!("USDX".parse::<Currency>().is_err());
    }

    #[test]
    fn exact_mul_refuses_to_round() {
        assert_eq!(exact_mul(d("0.0000025"), d("1234567")).unwrap(), d("3.0864175"));
        // 29 fractional digits cannot be held: rust_decimal would round.
        assert!(exact_mul(d("0.00000000000001"), d("0.000000000000001")).is_err());
        // Mantissa overflow.
        assert!(exact_mul(Decimal::MAX, d("2")).is_err());
        // 96-bit mantissa exceeded by the product of two large scaled values.
        assert!(exact_mul(d("123456789012345.123456789"), d("98765432109876.98765")).is_err());
    }

    #[test]
    fn exact_add_refuses_to_round() {
        assert_eq!(exact_add(d("1.5"), d("0.25")).unwrap(), d("1.75"));
        assert!(exact_add(Decimal::MAX, d("1")).is_err());
        assert!(exact_add(d("7922816251426433759354395033.5"), d("0.01")).is_err());
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

    proptest! {
        #[test]
        fn exact_mul_is_exact_when_it_succeeds(a in any::<i64>(), sa in 0u32..15, b in any::<i32>(), sb in 0u32..15) {
            let (a, b) = (Decimal::new(a, sa), Decimal::new(b as i64, sb));
            if let Ok(p) = exact_mul(a, b) {
                // Compare against integer arithmetic on the mantissas.
                let expected = a.mantissa() * b.mantissa();
                prop_assert_eq!(p.mantissa(), expected);
                prop_assert_eq!(p.scale(), sa + sb);
            }
        }
    }
}
