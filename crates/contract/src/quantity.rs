//! Kubernetes quantities (`500m`, `2Gi`, `1.5`, `1e3`), the one parser every
//! side uses: deploy's requests and capacity check, the CLI's `--kubelet-cpu`,
//! the simulator's scheduler. Exact: the value is kept in nano-units, as
//! `resource.Quantity` keeps it, and rounded up the way Kubernetes rounds
//! (`MilliValue`, `Value`).

use std::fmt;

/// A parsed quantity, in nano-units (`1` is 1,000,000,000; `1m` is 1,000,000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Quantity {
    nanos: i128,
}

/// Why a text is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a quantity: {why}")]
pub struct QuantityError {
    pub text: String,
    pub why: &'static str,
}

const NANO: i128 = 1_000_000_000;
/// Beyond this a quantity is not a resource amount anyone means (`resource.Quantity`
/// itself stops at 2^63-1 in its fast path).
const MAX_NANOS: i128 = 1 << 100;

impl Quantity {
    /// Parse `<sign><digits>[.<digits>]<suffix>`, the suffix one of
    /// `n u m "" k M G T P E`, `Ki Mi Gi Ti Pi Ei` or `e<exponent>`/`E<exponent>`.
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let bad = |why| QuantityError {
            text: text.to_owned(),
            why,
        };
        let s = text;
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if s.trim() != s {
            return Err(bad("it has spaces around it"));
        }
        let (negative, s) = match s.as_bytes()[0] {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, suffix) = s.split_at(end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() {
            return Err(bad("it has no number"));
        }
        if fraction.contains('.') {
            return Err(bad("it has two decimal points"));
        }
        // The number as an integer `digits` and its decimal `scale`.
        // As many fraction digits as the integer arithmetic holds (30 in all):
        // an exponent may make the 13th significant (`1.0000000000001E`).
        let room = 30usize.saturating_sub(whole.len());
        let kept = &fraction[..fraction.len().min(room)];
        // Digits beyond those kept round up, as everything else here does.
        let dropped = fraction[kept.len()..].bytes().any(|d| d != b'0');
        let digits: String = format!("{whole}{kept}");
        let mut mantissa: i128 = 0;
        for d in digits.bytes() {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(i128::from(d - b'0')))
                .filter(|m| *m <= MAX_NANOS)
                .ok_or_else(|| bad("it is too large"))?;
        }
        let scale = kept.len() as i32;
        // (base, exponent) of the suffix: 10^exp or 2^exp.
        let (binary, exponent): (bool, i32) = match suffix {
            "n" => (false, -9),
            "u" => (false, -6),
            "m" => (false, -3),
            "" => (false, 0),
            "k" => (false, 3),
            "M" => (false, 6),
            "G" => (false, 9),
            "T" => (false, 12),
            "P" => (false, 15),
            "E" => (false, 18),
            "Ki" => (true, 10),
            "Mi" => (true, 20),
            "Gi" => (true, 30),
            "Ti" => (true, 40),
            "Pi" => (true, 50),
            "Ei" => (true, 60),
            _ if suffix.starts_with(['e', 'E']) => {
                let e: i32 = suffix[1..]
                    .parse()
                    .map_err(|_| bad("its exponent is not a whole number"))?;
                if !(-40..=40).contains(&e) {
                    return Err(bad("its exponent is out of range"));
                }
                (false, e)
            }
            _ => {
                return Err(bad(
                    "its suffix is not one of n u m k M G T P E Ki Mi Gi Ti Pi Ei",
                ));
            }
        };
        // nanos = mantissa * 10^(9 - scale) * factor, rounded up (away from zero).
        let too_large = || bad("it is too large");
        let mut nanos = mantissa;
        let mut ten_power = 9 - scale;
        if binary {
            nanos = nanos
                .checked_mul(1i128 << exponent)
                .filter(|n| *n <= MAX_NANOS)
                .ok_or_else(too_large)?;
        } else {
            ten_power += exponent;
        }
        if ten_power >= 0 {
            nanos = 10i128
                .checked_pow(ten_power as u32)
                .and_then(|p| nanos.checked_mul(p))
                .filter(|n| *n <= MAX_NANOS)
                .ok_or_else(too_large)?;
        } else {
            let divisor = 10i128
                .checked_pow(ten_power.unsigned_abs())
                .unwrap_or(i128::MAX);
            nanos = ceil_div(nanos, divisor);
        }
        if dropped {
            nanos += 1;
        }
        Ok(Self {
            nanos: if negative { -nanos } else { nanos },
        })
    }

    /// A quantity of `milli` thousandths (`Quantity::from_milli(40)` is `40m`).
    pub fn from_milli(milli: i64) -> Self {
        Self {
            nanos: i128::from(milli) * 1_000_000,
        }
    }

    pub fn is_negative(self) -> bool {
        self.nanos < 0
    }

    /// Thousandths, rounded up (`MilliValue`): `0.5` → 500, `1n` → 1.
    pub fn milli(self) -> i128 {
        ceil_div(self.nanos, 1_000_000)
    }

    /// Whole units, rounded up (`Value`): `100Mi` → 104857600, `500m` → 1.
    pub fn value(self) -> i128 {
        ceil_div(self.nanos, NANO)
    }

    /// As a floating-point number of units, for ratios and reports.
    pub fn as_f64(self) -> f64 {
        self.nanos as f64 / NANO as f64
    }

    /// Whether the text wrote this with a binary suffix (`Ki` … `Ei`), for
    /// messages that tell a memory amount from a CPU amount.
    pub fn is_binary_text(text: &str) -> bool {
        text.trim_end().ends_with('i')
    }
}

impl std::str::FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl std::ops::Add for Quantity {
    type Output = Quantity;
    fn add(self, other: Self) -> Self {
        Self {
            nanos: self.nanos.saturating_add(other.nanos),
        }
    }
}

impl fmt::Display for Quantity {
    /// Milli-units when not whole (`40m`), else whole units (`2`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos % NANO == 0 {
            write!(f, "{}", self.nanos / NANO)
        } else {
            write!(f, "{}m", self.milli())
        }
    }
}

/// `a / b` rounded away from zero.
fn ceil_div(a: i128, b: i128) -> i128 {
    let q = a / b;
    if a % b == 0 {
        q
    } else if a > 0 {
        q + 1
    } else {
        q - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar_as_a_table() {
        // (text, milli, value)
        let table: &[(&str, i128, i128)] = &[
            ("0", 0, 0),
            ("1", 1_000, 1),
            ("40m", 40, 1),
            ("0.5", 500, 1),
            (".5", 500, 1),
            ("5.", 5_000, 5),
            ("1.5", 1_500, 2),
            ("+2", 2_000, 2),
            ("-1", -1_000, -1),
            ("1n", 1, 1),
            ("1u", 1, 1),
            ("2k", 2_000_000, 2_000),
            ("50M", 50_000_000_000, 50_000_000),
            ("1G", 1_000_000_000_000, 1_000_000_000),
            ("1Ki", 1_024_000, 1_024),
            ("100Mi", 104_857_600_000, 104_857_600),
            ("102400Ki", 104_857_600_000, 104_857_600),
            ("1.5Gi", 1_610_612_736_000, 1_610_612_736),
            ("2Gi", 2_147_483_648_000, 2_147_483_648),
            ("1Ti", 1_099_511_627_776_000, 1_099_511_627_776),
            ("1e3", 1_000_000, 1_000),
            ("1E-3", 1, 1),
            ("12e6", 12_000_000_000, 12_000_000),
            ("0.1m", 1, 1),
            ("123456789.123456789", 123_456_789_124, 123_456_790),
            ("0.0000000000001", 1, 1),
            (
                "1.0000000000001E",
                1_000_000_000_000_100_000_000,
                1_000_000_000_000_100_000,
            ),
            ("0.0000000000000000000000000000001", 1, 1),
        ];
        for &(text, milli, value) in table {
            let q = Quantity::parse(text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!((q.milli(), q.value()), (milli, value), "{text}");
        }
    }

    #[test]
    fn what_is_not_a_quantity_says_why() {
        for (text, why) in [
            ("", "empty"),
            ("m", "no number"),
            ("-", "no number"),
            ("1.2.3", "two decimal points"),
            ("5Qi", "suffix"),
            ("1 Gi", "suffix"),
            (" 1", "spaces"),
            ("1 ", "spaces"),
            ("lots", "no number"),
            ("1e", "exponent"),
            ("1e99", "out of range"),
            ("99999999999999999999999999999999999999999", "too large"),
            ("1000000000Ei", "too large"),
        ] {
            let e = Quantity::parse(text).unwrap_err();
            assert!(e.why.contains(why), "{text}: {e}");
            assert!(e.to_string().contains(&format!("`{text}`")), "{e}");
        }
    }

    #[test]
    fn sums_and_display() {
        let sum = Quantity::parse("40m").unwrap() + Quantity::parse("1").unwrap();
        assert_eq!(sum.milli(), 1_040);
        assert_eq!(sum.to_string(), "1040m");
        assert_eq!(Quantity::from_milli(2_000).to_string(), "2");
        assert!(Quantity::parse("-1m").unwrap().is_negative());
        assert!(Quantity::is_binary_text("1Gi"));
        assert!(!Quantity::is_binary_text("1G"));
    }
}
