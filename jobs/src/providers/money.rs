//! Decimal strings (Duffel's `"123.45"`) to and from integer minor units (Stripe's `12345`),
//! without floats.
//!
//! The number of minor digits comes from ISO 4217: 0 for JPY, KRW, …; 3 for BHD, KWD, …; 2 for
//! everything else. Parsing is strict: digits, an optional `.` followed by at least one digit, no
//! sign, no exponent, no spaces or separators; more fraction digits than the currency has are
//! accepted only when the extra ones are zeros (`"45.000"` GBP is 4500; `"45.001"` is refused,
//! never rounded).

/// Why a decimal amount or currency code was refused. Carries no amount (amounts are not
/// secret, but an error text stays short and uniform).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Not a plain non-negative decimal number.
    #[error("malformed decimal amount")]
    Malformed,
    /// More precision than the currency's minor unit (would need rounding).
    #[error("amount has more decimals than {currency} allows")]
    TooPrecise {
        /// The currency.
        currency: String,
    },
    /// Does not fit in an `i64` of minor units.
    #[error("amount out of range")]
    Overflow,
    /// Not a three-letter code.
    #[error("malformed currency code")]
    BadCurrency,
}

/// ISO 4217 currencies with no minor unit.
const ZERO_DECIMAL: &[&str] = &[
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
    "VUV", "XAF", "XOF", "XPF",
];
/// ISO 4217 currencies with three minor digits.
const THREE_DECIMAL: &[&str] = &["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];

/// The currency code in upper case, checked to be three ASCII letters.
pub fn normalize_currency(code: &str) -> Result<String, MoneyError> {
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(code.to_ascii_uppercase())
    } else {
        Err(MoneyError::BadCurrency)
    }
}

/// Minor digits of a currency (case-insensitive).
pub fn minor_digits(currency: &str) -> Result<u32, MoneyError> {
    let c = normalize_currency(currency)?;
    Ok(if ZERO_DECIMAL.contains(&c.as_str()) {
        0
    } else if THREE_DECIMAL.contains(&c.as_str()) {
        3
    } else {
        2
    })
}

/// `"123.45"` GBP → `12345`. See the module docs for what is accepted.
pub fn decimal_to_minor(amount: &str, currency: &str) -> Result<i64, MoneyError> {
    let digits = minor_digits(currency)?;
    let (int_part, frac_part) = match amount.split_once('.') {
        Some((i, f)) => {
            if f.is_empty() {
                return Err(MoneyError::Malformed);
            }
            (i, f)
        }
        None => (amount, ""),
    };
    if int_part.is_empty()
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(MoneyError::Malformed);
    }
    let keep = frac_part.len().min(digits as usize);
    let (frac_kept, frac_extra) = frac_part.split_at(keep);
    if frac_extra.bytes().any(|b| b != b'0') {
        return Err(MoneyError::TooPrecise {
            currency: normalize_currency(currency)?,
        });
    }
    let mut minor: i64 = 0;
    for b in int_part.bytes().chain(frac_kept.bytes()) {
        minor = minor
            .checked_mul(10)
            .and_then(|m| m.checked_add(i64::from(b - b'0')))
            .ok_or(MoneyError::Overflow)?;
    }
    for _ in keep..digits as usize {
        minor = minor.checked_mul(10).ok_or(MoneyError::Overflow)?;
    }
    Ok(minor)
}

/// `12345` GBP → `"123.45"`; `4500` JPY → `"4500"`; negative amounts get a leading `-`.
pub fn minor_to_decimal(minor: i64, currency: &str) -> Result<String, MoneyError> {
    let digits = minor_digits(currency)?;
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    if digits == 0 {
        return Ok(format!("{sign}{abs}"));
    }
    let scale = 10u64.pow(digits);
    Ok(format!(
        "{sign}{}.{:0width$}",
        abs / scale,
        abs % scale,
        width = digits as usize
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_strings_convert_to_minor_units_without_floats() {
        let cases: &[(&str, &str, i64)] = &[
            ("45.00", "GBP", 4500),
            ("45", "GBP", 4500),
            ("45.5", "gbp", 4550),
            ("0.01", "USD", 1),
            ("0", "EUR", 0),
            ("1234.56", "EUR", 123_456),
            ("45.000", "GBP", 4500),
            ("4500", "JPY", 4500),
            ("4500.00", "JPY", 4500),
            ("1.234", "KWD", 1234),
            ("1.2", "KWD", 1200),
            ("0.29", "USD", 29), // 0.29 * 100 is 28.999999999999996 in f64
            ("92233720368547758.07", "USD", i64::MAX),
        ];
        for (s, cur, want) in cases {
            assert_eq!(decimal_to_minor(s, cur), Ok(*want), "{s} {cur}");
        }
    }

    #[test]
    fn malformed_or_imprecise_decimals_are_refused() {
        for s in [
            "", ".", ".5", "5.", "-1.00", "+1.00", "1e3", " 1.00", "1.00 ", "1,00", "1.0.0", "NaN",
            "١٢", "0x10",
        ] {
            assert_eq!(
                decimal_to_minor(s, "GBP"),
                Err(MoneyError::Malformed),
                "{s:?}"
            );
        }
        assert!(matches!(
            decimal_to_minor("45.001", "GBP"),
            Err(MoneyError::TooPrecise { .. })
        ));
        assert!(matches!(
            decimal_to_minor("45.5", "JPY"),
            Err(MoneyError::TooPrecise { .. })
        ));
        assert_eq!(
            decimal_to_minor("92233720368547758.08", "USD"),
            Err(MoneyError::Overflow)
        );
        assert_eq!(
            decimal_to_minor("99999999999999999999", "JPY"),
            Err(MoneyError::Overflow)
        );
        assert_eq!(decimal_to_minor("1.00", "GB"), Err(MoneyError::BadCurrency));
        assert_eq!(
            decimal_to_minor("1.00", "G1P"),
            Err(MoneyError::BadCurrency)
        );
    }

    #[test]
    fn minor_units_format_back_to_decimal_strings() {
        assert_eq!(minor_to_decimal(4500, "GBP").unwrap(), "45.00");
        assert_eq!(minor_to_decimal(1, "usd").unwrap(), "0.01");
        assert_eq!(minor_to_decimal(0, "EUR").unwrap(), "0.00");
        assert_eq!(minor_to_decimal(4500, "JPY").unwrap(), "4500");
        assert_eq!(minor_to_decimal(1234, "KWD").unwrap(), "1.234");
        assert_eq!(minor_to_decimal(-250, "EUR").unwrap(), "-2.50");
        assert_eq!(
            minor_to_decimal(i64::MIN, "USD").unwrap(),
            "-92233720368547758.08"
        );
        for (minor, cur) in [(123_456, "EUR"), (7, "JPY"), (1001, "BHD"), (99, "USD")] {
            let s = minor_to_decimal(minor, cur).unwrap();
            assert_eq!(decimal_to_minor(&s, cur).unwrap(), minor, "{s}");
        }
    }
}
