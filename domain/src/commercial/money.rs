//! Money: integer amounts in a currency's minor units (cents, yen, fils), never floats.

use iso_currency::Currency as Iso;

/// An ISO 4217 currency that has minor units (so amounts can be exact integers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Currency {
    iso: Iso,
    exponent: u32,
}

impl Currency {
    /// Parses an upper-case ISO 4217 code. Funds and metals without minor units (XAU, XDR)
    /// are refused: a contract is priced in money people pay with.
    pub fn parse(code: &str) -> Result<Self, String> {
        let iso = Iso::from_code(code)
            .ok_or_else(|| format!("{code:?} is not an ISO 4217 currency code"))?;
        let exponent = iso
            .exponent()
            .ok_or_else(|| format!("{code} has no minor unit; contracts need one"))?;
        Ok(Self {
            iso,
            exponent: u32::from(exponent),
        })
    }

    pub fn code(self) -> &'static str {
        self.iso.code()
    }

    /// Digits after the decimal point (2 for EUR, 0 for JPY, 3 for BHD).
    pub fn exponent(self) -> u32 {
        self.exponent
    }

    /// `amount` minor units as text a person reads: `1234.50 EUR`, `1200 JPY`, `-0.005 BHD`.
    pub fn format(self, amount: i64) -> String {
        if self.exponent == 0 {
            return format!("{amount} {}", self.code());
        }
        let scale = 10u64.pow(self.exponent);
        let sign = if amount < 0 { "-" } else { "" };
        let abs = amount.unsigned_abs();
        format!(
            "{sign}{}.{:0width$} {}",
            abs / scale,
            abs % scale,
            self.code(),
            width = self.exponent as usize
        )
    }
}

/// `quantity × unit` in minor units, or an error naming what overflowed.
pub fn times(quantity: i64, unit: i64, what: &str) -> Result<i64, String> {
    quantity
        .checked_mul(unit)
        .filter(|v| v.unsigned_abs() <= crate::licensing::license::MAX_LIMIT as u64)
        .ok_or_else(|| format!("{what}: {quantity} × {unit} is too large"))
}

/// Adds amounts, refusing totals beyond what every JSON reader keeps exact.
pub fn sum(amounts: impl IntoIterator<Item = i64>, what: &str) -> Result<i64, String> {
    let mut total: i64 = 0;
    for a in amounts {
        total = total
            .checked_add(a)
            .filter(|v| v.unsigned_abs() <= crate::licensing::license::MAX_LIMIT as u64)
            .ok_or_else(|| format!("{what}: the total is too large"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currencies_know_their_minor_units() {
        assert_eq!(Currency::parse("EUR").unwrap().exponent(), 2);
        assert_eq!(Currency::parse("JPY").unwrap().exponent(), 0);
        assert_eq!(Currency::parse("BHD").unwrap().exponent(), 3);
        assert!(Currency::parse("XAU").is_err());
        assert!(Currency::parse("eur").is_err());
        assert!(Currency::parse("ZZZ").is_err());
    }

    #[test]
    fn amounts_format_with_the_currency_exponent() {
        let f = |c: &str, a| Currency::parse(c).unwrap().format(a);
        assert_eq!(f("EUR", 123450), "1234.50 EUR");
        assert_eq!(f("EUR", 5), "0.05 EUR");
        assert_eq!(f("USD", -5), "-0.05 USD");
        assert_eq!(f("JPY", 1200), "1200 JPY");
        assert_eq!(f("BHD", 1005), "1.005 BHD");
    }

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(times(3, 250, "x"), Ok(750));
        assert!(times(i64::MAX, 2, "x").is_err());
        assert!(times(1 << 40, 1 << 20, "x").is_err());
        assert_eq!(sum([1, 2, 3], "x"), Ok(6));
        assert!(sum([crate::licensing::license::MAX_LIMIT, 1], "x").is_err());
    }
}
