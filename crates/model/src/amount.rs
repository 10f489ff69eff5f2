//! [`Amount`]: the one representation of money in the pipeline (unit
//! prices, costs, balances, budgets, ledger entries).
//!
//! An amount is an integer count of 10^-24 of a currency unit, held in an
//! `i128`, and bounded by what ClickHouse's `Decimal(38, 24)` column holds:
//! at most 38 digits, 24 of them after the point, so
//! `|amount| ≤ 99,999,999,999,999.999999999999999999999999`. The stored
//! form is thus the in-memory form (a row's `Decimal(38, 24)` is the same
//! `i128`), and every conversion that could lose or wrap a digit is a
//! `Result`:
//!
//! - arithmetic is checked ([`Amount::checked_add`], [`Amount::checked_mul_count`]):
//!   a result outside the range is an error, never wrapped or rounded;
//! - parsing refuses more than 24 decimal places and out-of-range values;
//! - the only rounding is named: [`Amount::round_half_even`] (display) and
//!   [`Amount::mul_ratio_half_even`] (contract discounts, to 10^-24).
//!
//! No `std::ops` arithmetic but negation is implemented, on purpose: `a + b`
//! would have to panic or wrap on overflow.

use rust_decimal::Decimal;
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// Decimal places of every amount.
pub const AMOUNT_SCALE: u32 = 24;
/// 10^24: one currency unit, scaled.
const ONE: i128 = 1_000_000_000_000_000_000_000_000;
/// 10^38 − 1: the largest `Decimal(38, 24)` value, scaled.
const SCALED_MAX: i128 = 99_999_999_999_999_999_999_999_999_999_999_999_999;

/// An exact amount of money in some currency: `scaled / 10^24`.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(i128);

/// An [`Amount`] kept with byte alignment, for amounts held by the
/// million (per-account settings): `i128`'s 16-byte alignment makes an
/// `Option<Amount>` 32 bytes, an `Option<PackedAmount>` 17. Only made from
/// an `Amount`, so it always holds a valid one; read it with [`get`](Self::get).
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C, packed)]
pub struct PackedAmount(i128);

impl PackedAmount {
    pub fn get(self) -> Amount {
        Amount(self.0)
    }
}

impl From<Amount> for PackedAmount {
    fn from(amount: Amount) -> Self {
        PackedAmount(amount.0)
    }
}

impl fmt::Debug for PackedAmount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.get(), f)
    }
}

impl serde::Serialize for PackedAmount {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&self.get(), serializer)
    }
}

impl<'de> serde::Deserialize<'de> for PackedAmount {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <Amount as serde::Deserialize>::deserialize(deserializer).map(PackedAmount::from)
    }
}

/// Why an amount could not be made.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum AmountError {
    #[error("{0} is outside the range of an amount (±99,999,999,999,999.999999999999999999999999, ClickHouse's Decimal(38, 24))")]
    OutOfRange(String),
    #[error("{0} has more than 24 decimal places")]
    TooManyPlaces(String),
    #[error("{0:?} is not a decimal number (digits, an optional sign and point)")]
    Malformed(String),
}

impl Amount {
    pub const ZERO: Amount = Amount(0);
    pub const ONE: Amount = Amount(ONE);
    /// The largest amount: 99,999,999,999,999.999999999999999999999999.
    pub const MAX: Amount = Amount(SCALED_MAX);
    pub const MIN: Amount = Amount(-SCALED_MAX);

    /// From its scaled integer (`Decimal(38, 24)`'s representation).
    pub fn from_scaled(scaled: i128) -> Result<Amount, AmountError> {
        if (-SCALED_MAX..=SCALED_MAX).contains(&scaled) {
            Ok(Amount(scaled))
        } else {
            Err(AmountError::OutOfRange(format!("{scaled}e-24")))
        }
    }

    /// The scaled integer: `Decimal(38, 24)`'s representation.
    pub const fn scaled(self) -> i128 {
        self.0
    }

    /// For constants: a whole number of currency units, checked when the
    /// constant is evaluated (at compile time).
    pub const fn const_units(units: i64) -> Amount {
        let scaled = units as i128 * ONE;
        assert!(-SCALED_MAX <= scaled && scaled <= SCALED_MAX, "an amount constant out of range");
        Amount(scaled)
    }

    /// For constants: a scaled integer, checked when the constant is
    /// evaluated (at compile time).
    pub const fn const_scaled(scaled: i128) -> Amount {
        assert!(-SCALED_MAX <= scaled && scaled <= SCALED_MAX, "an amount constant out of range");
        Amount(scaled)
    }

    /// A whole number of currency units: every `u32` is in range.
    pub const fn units(units: u32) -> Amount {
        Amount(units as i128 * ONE)
    }

    /// A whole number of currency units, if it is in range.
    pub fn try_from_units(units: i128) -> Result<Amount, AmountError> {
        units.checked_mul(ONE).ok_or_else(|| AmountError::OutOfRange(units.to_string())).and_then(Self::from_scaled)
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    pub fn is_negative(self) -> bool {
        self.0 < 0
    }

    pub fn is_positive(self) -> bool {
        self.0 > 0
    }

    /// `self + other`, or an error if the sum leaves the range.
    pub fn checked_add(self, other: Amount) -> Result<Amount, AmountError> {
        // Two amounts near the bound sum past i128::MAX (2·10^38 > 1.7·10^38).
        self.0
            .checked_add(other.0)
            .ok_or(())
            .and_then(|s| Self::from_scaled(s).map_err(|_| ()))
            .map_err(|()| AmountError::OutOfRange(format!("{self} + {other}")))
    }

    /// `self − other`, or an error if the difference leaves the range.
    pub fn checked_sub(self, other: Amount) -> Result<Amount, AmountError> {
        self.checked_add(-other).map_err(|_| AmountError::OutOfRange(format!("{self} − {other}")))
    }

    /// The sum of `amounts`, or an error once it leaves the range.
    pub fn checked_sum(amounts: impl IntoIterator<Item = Amount>) -> Result<Amount, AmountError> {
        amounts.into_iter().try_fold(Amount::ZERO, Amount::checked_add)
    }

    /// `self × count` (a unit price times a quantity), or an error.
    pub fn checked_mul_count(self, count: u64) -> Result<Amount, AmountError> {
        self.0
            .checked_mul(i128::from(count))
            .ok_or(())
            .and_then(|p| Self::from_scaled(p).map_err(|_| ()))
            .map_err(|()| AmountError::OutOfRange(format!("{self} × {count}")))
    }

    /// `self × numerator / denominator`, rounded half-even to 24 places
    /// (contract discounts: the one rounding rule of pricing). `None`
    /// unless `0 < denominator` and `numerator ≤ denominator`, which keep
    /// the result within `|self|`.
    pub fn mul_ratio_half_even(self, numerator: u32, denominator: u32) -> Option<Amount> {
        if denominator == 0 || numerator > denominator {
            return None;
        }
        let (n, d) = (i128::from(numerator), i128::from(denominator));
        // self = q·d + r with |r| < d: self·n/d = q·n + r·n/d, where |q·n|
        // ≤ |self| and |r·n| < 2^64.
        let (q, r) = (self.0 / d, self.0 % d);
        let rn = r * n;
        let mut result = q * n + rn / d;
        // Half-even on what r·n/d left over (same sign as self).
        let twice = (rn % d).abs() * 2;
        if twice > d || (twice == d && result % 2 != 0) {
            result += self.0.signum();
        }
        Some(Amount(result))
    }

    /// Rounded half-even to `places` decimal places (at most 24): the one
    /// rounding rule for display.
    pub fn round_half_even(self, places: u32) -> Amount {
        if places >= AMOUNT_SCALE {
            return self;
        }
        let unit = 10i128.pow(AMOUNT_SCALE - places);
        let (q, r) = (self.0 / unit, self.0 % unit);
        let twice = r.abs() * 2;
        let q = if twice > unit || (twice == unit && q % 2 != 0) { q + self.0.signum() } else { q };
        // |q·unit| ≤ |self| rounded up to a multiple of unit: at most 10^38,
        // one step past the range only for values a display never holds.
        Amount((q * unit).clamp(-SCALED_MAX, SCALED_MAX))
    }

    /// Compares `self × a` with `other × b` exactly (budget thresholds:
    /// `spend × 100 ≥ budget × percent`), without overflow.
    pub fn cmp_scaled_by(self, a: u32, other: Amount, b: u32) -> Ordering {
        let left = wide_mul(self.0, a);
        let right = wide_mul(other.0, b);
        left.cmp(&right)
    }

    /// `self / other` as a truncated integer ratio, for projections (not
    /// money: how many times one amount fits another). `None` when
    /// `other` is zero.
    pub fn ratio_times(self, other: Amount, times: i64) -> Option<i128> {
        if other.is_zero() {
            return None;
        }
        let t = i128::from(times);
        match self.0.checked_mul(t) {
            Some(p) => Some(p / other.0),
            // Too large to multiply first: divide first (truncates more).
            None => (self.0 / other.0).checked_mul(t),
        }
    }

    /// The exact `rust_decimal` value, for code that needs one (parsing
    /// edges, reference checks). Fails past 28 significant digits.
    pub fn to_decimal(self) -> Result<Decimal, AmountError> {
        let (mut mantissa, mut scale) = (self.0, AMOUNT_SCALE);
        while scale > 0 && mantissa % 10 == 0 {
            mantissa /= 10;
            scale -= 1;
        }
        Decimal::try_from_i128_with_scale(mantissa, scale).map_err(|_| AmountError::OutOfRange(self.to_string()))
    }

    /// An exact `rust_decimal` value as an amount: fails on more than 24
    /// significant decimal places or out of range, never rounds.
    pub fn from_decimal(d: Decimal) -> Result<Amount, AmountError> {
        let d = d.normalize();
        let scale = d.scale();
        if scale > AMOUNT_SCALE {
            return Err(AmountError::TooManyPlaces(d.to_string()));
        }
        d.mantissa()
            .checked_mul(10i128.pow(AMOUNT_SCALE - scale))
            .ok_or_else(|| AmountError::OutOfRange(d.to_string()))
            .and_then(|s| Self::from_scaled(s).map_err(|_| AmountError::OutOfRange(d.to_string())))
    }

    /// `value / per` exactly (a price per million tokens → per token), or
    /// `None` when it needs more than 24 decimal places or leaves the range.
    pub fn from_decimal_per(value: Decimal, per: u64) -> Option<Amount> {
        let d = value.normalize();
        let (m, s) = (d.mantissa(), d.scale());
        let per = i128::from(per);
        if per == 0 {
            return None;
        }
        // value·10^24 / per, exact. When `per` divides the power of ten
        // (per million, per thousand), multiply by the quotient: a product
        // past i128 is then past the range too, never a false refusal.
        let scaled = if s <= AMOUNT_SCALE {
            let ten = 10i128.pow(AMOUNT_SCALE - s);
            if ten % per == 0 {
                m.checked_mul(ten / per)?
            } else {
                let n = m.checked_mul(ten)?;
                (n % per == 0).then(|| n / per)?
            }
        } else {
            let divisor = per.checked_mul(10i128.pow(s - AMOUNT_SCALE))?;
            (m % divisor == 0).then(|| m / divisor)?
        };
        Self::from_scaled(scaled).ok()
    }
}

/// `x × a` as a 256-bit signed value `(sign, high, low)` for comparisons:
/// `|x| < 2^127` and `a < 2^32` make it fit comfortably.
fn wide_mul(x: i128, a: u32) -> (i8, u128, u128) {
    let mag = x.unsigned_abs();
    let a = u128::from(a);
    let lo_part = (mag & u128::from(u64::MAX)) * a; // < 2^96
    let hi_part = (mag >> 64) * a; // < 2^96
    let (lo, carry) = lo_part.overflowing_add(hi_part << 64);
    let hi = (hi_part >> 64) + u128::from(carry);
    let sign = if x == 0 || a == 0 { 0 } else { x.signum() as i8 };
    // Order negatives by reversed magnitude.
    match sign {
        -1 => (-1, !hi, !lo),
        s => (s, hi, lo),
    }
}

/// `-a` is always in range (the range is symmetric): the one operator.
impl std::ops::Neg for Amount {
    type Output = Amount;
    fn neg(self) -> Amount {
        Amount(-self.0)
    }
}

impl Amount {
    /// Writes the shortest exact form into `out` (at most 41 bytes: a sign,
    /// 14 digits, a point and 24 digits); returns the length. Without
    /// `fmt`: amounts are written for every row fed to the ledger.
    pub fn write_to(self, out: &mut [u8; 48]) -> usize {
        // mag = whole·10^24 + hi·10^12 + lo; whole < 10^14 fits a u64.
        let (above_lo, lo) = div_rem_10e12(self.0.unsigned_abs());
        let (whole, hi) = div_rem_10e12(above_lo);
        let whole = whole as u64;
        let mut len = 0;
        if self.0 < 0 {
            out[0] = b'-';
            len = 1;
        }
        let mut digits = itoa::Buffer::new();
        let w = digits.format(whole).as_bytes();
        out[len..len + w.len()].copy_from_slice(w);
        len += w.len();
        if hi == 0 && lo == 0 {
            return len;
        }
        out[len] = b'.';
        len += 1;
        // 24 places, as two zero-padded halves of 12, less trailing zeros.
        let start = len;
        for half in [hi, lo] {
            let text = digits.format(half).as_bytes();
            out[len..len + 12 - text.len()].fill(b'0');
            out[len + 12 - text.len()..len + 12].copy_from_slice(text);
            len += 12;
        }
        while len > start && out[len - 1] == b'0' {
            len -= 1;
        }
        len
    }
}

/// `(n / 10^12, n % 10^12)` without `u128` division, a library call that
/// took most of [`Amount::write_to`]'s time (it runs for several amounts of
/// every row fed to the ledger). 10^12 = 2^12 · 5^12, and 5^12 < 2^28, so
/// `n >> 12` is divided by 5^12 a 32-bit limb at a time in `u64`s (whose
/// division by a constant compiles to a multiplication).
fn div_rem_10e12(n: u128) -> (u128, u64) {
    const FIVE_POW_12: u64 = 244_140_625;
    let (high, low_bits) = (n >> 12, (n & 0xFFF) as u64);
    let (mut quotient, mut rem) = (0u128, 0u64);
    for shift in [96u32, 64, 32, 0] {
        // rem < 5^12 < 2^28: the limb appended below it fits a u64.
        let current = (rem << 32) | ((high >> shift) as u64 & 0xFFFF_FFFF);
        quotient |= u128::from(current / FIVE_POW_12) << shift;
        rem = current % FIVE_POW_12;
    }
    (quotient, (rem << 12) | low_bits)
}

impl fmt::Display for Amount {
    /// The shortest exact form: `-12.5`, `0.003`, `7`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 48];
        let len = self.write_to(&mut buf);
        // Only ASCII digits, a sign and a point were written.
        f.write_str(std::str::from_utf8(&buf[..len]).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Amount {
    type Err = AmountError;

    /// `[+-]digits[.digits]`: at most 24 significant decimal places (zeros
    /// after them are fine), within the range. No exponent, no separators.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = || AmountError::Malformed(text.chars().take(64).collect());
        let (negative, unsigned) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let (whole, frac) = match unsigned.split_once('.') {
            Some((w, f)) => (w, f),
            None => (unsigned, ""),
        };
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (whole.is_empty() && frac.is_empty()) || !digits(whole) || !digits(frac) {
            return Err(malformed());
        }
        let frac = frac.trim_end_matches('0');
        if frac.len() > AMOUNT_SCALE as usize {
            return Err(AmountError::TooManyPlaces(text.chars().take(64).collect()));
        }
        let whole = whole.trim_start_matches('0');
        let out_of_range = || AmountError::OutOfRange(text.chars().take(64).collect());
        if whole.len() > 14 {
            return Err(out_of_range());
        }
        let whole: i128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| malformed())? };
        let frac_scaled: i128 = if frac.is_empty() {
            0
        } else {
            frac.parse::<i128>().map_err(|_| malformed())? * 10i128.pow(AMOUNT_SCALE - frac.len() as u32)
        };
        let scaled = whole * ONE + frac_scaled; // < 10^14 · 10^24: no overflow
        let scaled = if negative { -scaled } else { scaled };
        Amount::from_scaled(scaled).map_err(|_| out_of_range())
    }
}

/// Amounts travel as decimal strings (`"0.003"`), so no reader loses a
/// digit. Reading also takes JSON integers; a number with a fraction is
/// refused (it went through a binary float and may have lost digits).
impl serde::Serialize for Amount {
    /// As a string, written once: `collect_str` would go through `fmt` and
    /// the serializer's escaping a character at a time (every fed row has
    /// an amount or two).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 48];
        let len = self.write_to(&mut buf);
        match std::str::from_utf8(&buf[..len]) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.collect_str(self), // unreachable: ASCII was written
        }
    }
}

impl<'de> serde::Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AmountVisitor;
        impl serde::de::Visitor<'_> for AmountVisitor {
            type Value = Amount;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an exact decimal amount as a string (\"12.50\") or an integer")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Amount, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Amount, E> {
                Amount::try_from_units(i128::from(v)).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Amount, E> {
                Amount::try_from_units(i128::from(v)).map_err(E::custom)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Amount, E> {
                Err(E::custom(format!(
                    "amount {v} is a number with a fraction; write it as a string (\"{v}\") so that it stays exact"
                )))
            }
        }
        d.deserialize_any(AmountVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a(s: &str) -> Amount {
        s.parse().unwrap()
    }

    #[test]
    fn the_range_is_decimal_38_24() {
        assert_eq!(Amount::MAX.to_string(), "99999999999999.999999999999999999999999");
        assert_eq!(a("99999999999999.999999999999999999999999"), Amount::MAX);
        assert_eq!(a("-99999999999999.999999999999999999999999"), Amount::MIN);
        assert!(matches!("100000000000000".parse::<Amount>(), Err(AmountError::OutOfRange(_))));
        assert!(Amount::from_scaled(SCALED_MAX).is_ok());
        assert!(Amount::from_scaled(SCALED_MAX + 1).is_err());
        assert!(Amount::from_scaled(-SCALED_MAX - 1).is_err());
        assert!(Amount::from_scaled(i128::MAX).is_err() && Amount::from_scaled(i128::MIN).is_err());
    }

    #[test]
    fn parsing_is_exact_and_strict() {
        assert_eq!(a("0.000000000000000000000001").scaled(), 1);
        assert_eq!(a("1.5").scaled(), 15 * 10i128.pow(23));
        assert_eq!(a("-0.25").to_string(), "-0.25");
        assert_eq!(a("+7").to_string(), "7");
        assert_eq!(a(".5").to_string(), "0.5");
        assert_eq!(a("3.").to_string(), "3");
        assert_eq!(a("0.1000000000000000000000000000").to_string(), "0.1", "zeros past 24 places are exact");
        assert!(matches!("0.0000000000000000000000001".parse::<Amount>(), Err(AmountError::TooManyPlaces(_))));
        for bad in ["", ".", "-", "1e5", "1,5", "0x10", " 1", "1 ", "--1", "1.2.3", "NaN", "∞"] {
            assert!(matches!(bad.parse::<Amount>(), Err(AmountError::Malformed(_))), "{bad:?}");
        }
    }

    #[test]
    fn display_is_the_shortest_exact_form() {
        for s in ["0", "7", "-7", "0.003", "150000.003", "0.083333333333333340", "-0.000000000000000000000001"] {
            let shown = a(s).to_string();
            assert_eq!(a(&shown), a(s));
            assert!(!shown.contains('.') || !shown.ends_with('0'), "{shown}");
        }
    }

    #[test]
    fn arithmetic_is_checked_at_the_boundary() {
        let one_unit = Amount::from_scaled(1).unwrap();
        assert_eq!(Amount::MAX.checked_sub(one_unit).unwrap().checked_add(one_unit), Ok(Amount::MAX));
        assert!(Amount::MAX.checked_add(one_unit).is_err());
        assert!(Amount::MIN.checked_sub(one_unit).is_err());
        assert_eq!(a("0.000003").checked_mul_count(10_000_000_000), Ok(a("30000")));
        // 10^14 − 10^-24 is the largest: 10^13 × 10 is one past it.
        assert!(a("10000000000000").checked_mul_count(10).is_err());
        let tenth = a("9999999999999.999999999999999999999999"); // (10^37 − 1) · 10^-24
        assert_eq!(tenth.checked_mul_count(10).unwrap().scaled(), 10i128.pow(38) - 10);
        assert!(Amount::MAX.checked_add(Amount::MAX).is_err(), "past i128::MAX, not wrapped");
        assert!(Amount::MIN.checked_add(Amount::MIN).is_err());
        assert!(Amount::MAX.checked_mul_count(u64::MAX).is_err(), "i128 overflow is an error too");
    }

    #[test]
    fn decimal_conversions_are_fallible_at_their_boundaries() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        assert_eq!(Amount::from_decimal(d("0.000000000000000000000001")), Ok(Amount::from_scaled(1).unwrap()));
        assert!(Amount::from_decimal(d("0.0000000000000000000000001")).is_err());
        assert_eq!(Amount::from_decimal(d("99999999999999")).unwrap().to_string(), "99999999999999");
        assert!(Amount::from_decimal(d("100000000000000")).is_err());
        // rust_decimal holds 28 significant digits: amounts with more fail.
        assert_eq!(a("150000.003").to_decimal(), Ok(d("150000.003")));
        assert_eq!(a("79228.162514264337593543950335").to_decimal(), Ok(d("79228.162514264337593543950335")));
        assert!(Amount::MAX.to_decimal().is_err());
        assert_eq!(Amount::from_decimal_per(d("3"), 1_000_000), Some(a("0.000003")));
        assert_eq!(Amount::from_decimal_per(d("0.08333333333333334"), 1_000_000), Some(a("0.00000008333333333333334")));
        assert_eq!(Amount::from_decimal_per(d("1"), 3), None, "not exact");
        assert_eq!(Amount::from_decimal_per(d("0.0000000000000000001"), 1_000_000), None, "past 24 places");
        // A price near the bound: 10^20 − 1 per million is just under 10^14 per unit.
        assert_eq!(Amount::from_decimal_per(d("99999999999999999999"), 1_000_000), Some(a("99999999999999.999999")));
        assert_eq!(Amount::from_decimal_per(d("100000000000000000000"), 1_000_000), None, "10^14 per unit");
    }

    #[test]
    fn rounding_is_half_even_and_named() {
        assert_eq!(a("0.125").round_half_even(2), a("0.12"));
        assert_eq!(a("0.135").round_half_even(2), a("0.14"));
        assert_eq!(a("-0.135").round_half_even(2), a("-0.14"));
        assert_eq!(a("12.5").round_half_even(0), a("12"));
        assert_eq!(a("13.5").round_half_even(0), a("14"));
        let scaled = |n: i128| Amount::from_scaled(n).unwrap();
        assert_eq!(a("0.000002").mul_ratio_half_even(666_667, 1_000_000), Some(a("0.000001333334")));
        assert_eq!(scaled(5).mul_ratio_half_even(1, 2), Some(scaled(2)));
        assert_eq!(scaled(7).mul_ratio_half_even(1, 2), Some(scaled(4)));
        assert_eq!(scaled(-7).mul_ratio_half_even(1, 2), Some(scaled(-4)));
        assert_eq!(Amount::MAX.mul_ratio_half_even(1_000_000, 1_000_000), Some(Amount::MAX));
        assert_eq!(Amount::MAX.mul_ratio_half_even(2, 1), None);
        assert_eq!(Amount::MAX.mul_ratio_half_even(0, 0), None);
    }

    #[test]
    fn scaled_comparisons_do_not_overflow() {
        assert_eq!(Amount::MAX.cmp_scaled_by(1000, Amount::MAX, 999), Ordering::Greater);
        assert_eq!(a("80").cmp_scaled_by(100, a("100"), 80), Ordering::Equal);
        assert_eq!(a("-1").cmp_scaled_by(100, a("0"), 50), Ordering::Less);
        assert_eq!(a("-2").cmp_scaled_by(100, a("-1"), 100), Ordering::Less);
        assert_eq!(Amount::MIN.cmp_scaled_by(u32::MAX, Amount::MAX, u32::MAX), Ordering::Less);
    }

    #[test]
    fn serde_takes_strings_and_integers_never_floats() {
        assert_eq!(serde_json::from_str::<Amount>("\"12.50\"").unwrap(), a("12.5"));
        assert_eq!(serde_json::from_str::<Amount>("12").unwrap(), a("12"));
        assert!(serde_json::from_str::<Amount>("12.5").unwrap_err().to_string().contains("string"));
        assert!(serde_json::from_str::<Amount>("\"1e400\"").is_err());
        assert_eq!(serde_json::to_string(&a("0.003")).unwrap(), "\"0.003\"");
    }

    proptest! {
        #[test]
        fn division_by_10e12_matches_u128_division(n in any::<u128>()) {
            prop_assert_eq!(div_rem_10e12(n), (n / 1_000_000_000_000, (n % 1_000_000_000_000) as u64));
        }

        #[test]
        fn text_round_trips(scaled in -SCALED_MAX..=SCALED_MAX) {
            let x = Amount::from_scaled(scaled).unwrap();
            prop_assert_eq!(x.to_string().parse::<Amount>(), Ok(x));
        }

        #[test]
        fn checked_ops_agree_with_wide_integers(x in any::<i128>(), y in any::<i128>(), n in any::<u64>()) {
            let (x, y) = (x % (SCALED_MAX + 1), y % (SCALED_MAX + 1));
            let (ax, ay) = (Amount::from_scaled(x).unwrap(), Amount::from_scaled(y).unwrap());
            let sum = x.checked_add(y).filter(|s| s.abs() <= SCALED_MAX);
            prop_assert_eq!(ax.checked_add(ay).ok().map(Amount::scaled), sum);
            let product = x.checked_mul(i128::from(n)).filter(|p| p.abs() <= SCALED_MAX);
            prop_assert_eq!(ax.checked_mul_count(n).ok().map(Amount::scaled), product);
        }

        #[test]
        fn scaled_comparison_matches_exact_arithmetic(x in any::<i64>(), a_ in any::<u32>(), y in any::<i64>(), b in any::<u32>()) {
            let expected = (i128::from(x) * i128::from(a_)).cmp(&(i128::from(y) * i128::from(b)));
            let got = Amount::from_scaled(i128::from(x)).unwrap().cmp_scaled_by(a_, Amount::from_scaled(i128::from(y)).unwrap(), b);
            prop_assert_eq!(got, expected);
        }
    }
}
