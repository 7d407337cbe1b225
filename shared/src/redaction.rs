//! Storage modes: how much of a call a tenant lets the platform keep, and
//! the redaction that keeps personal data out of Postgres under
//! `everything_except_pii`. Each writer applies the tenant's mode before
//! its statement (the ingress to Twilio's parameters and the call's
//! numbers, the dispatch-worker to runtime events and transcripts, the api
//! and the automation-worker to tool inputs and outputs): what is written
//! is already redacted, in the WAL too. See
//! docs/decisions/0050-storage-modes.md.
//!
//! Redaction replaces, inside any text, e-mail addresses (`[EMAIL]`),
//! IBANs passing their mod-97 check (`[IBAN]`), payment card numbers of
//! 13 to 19 digits passing the Luhn check (`[CARD]`), US social security
//! numbers written 3-2-4 with a valid area, group and serial (`[SSN]`),
//! and phone numbers (`[PHONE]`: `+` and 8 to 15 digits, 10 digits, 11
//! starting with 0 or 1, or 3-4 digits with a separator). A number that
//! fails its check (an order number failing Luhn, a date, an amount)
//! stays.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Captures, Regex};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A tenant's storage mode (`tenants.data_storage`), also recorded on each
/// call as the mode it was written under.
#[derive(
    Debug,
    Default,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    sqlx::Type,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum DataStorage {
    /// Everything as received.
    #[default]
    Everything,
    /// Personal data replaced by typed placeholders before it is stored;
    /// the call's numbers masked but for their last 4 digits.
    EverythingExceptPii,
    /// No transcript, no event payloads, no tool inputs or outputs; calls
    /// keep status, timestamps, durations, agent and version.
    BasicAttributesOnly,
}

impl DataStorage {
    pub fn as_str(self) -> &'static str {
        match self {
            DataStorage::Everything => "everything",
            DataStorage::EverythingExceptPii => "everything_except_pii",
            DataStorage::BasicAttributesOnly => "basic_attributes_only",
        }
    }

    /// A caller's or callee's number as the call keeps it.
    pub fn number(self, number: &str) -> String {
        match self {
            DataStorage::Everything => number.to_owned(),
            DataStorage::EverythingExceptPii => mask_number(number, 4),
            DataStorage::BasicAttributesOnly => mask_number(number, 0),
        }
    }

    /// Free text (a transcript segment, an error message) as stored: `None`
    /// when the mode keeps none; the flag says whether anything was
    /// replaced.
    pub fn text(self, text: &str) -> Option<(Cow<'_, str>, bool)> {
        match self {
            DataStorage::Everything => Some((Cow::Borrowed(text), false)),
            DataStorage::EverythingExceptPii => {
                let redacted = redact_text(text);
                let changed = matches!(redacted, Cow::Owned(_));
                Some((redacted, changed))
            }
            DataStorage::BasicAttributesOnly => None,
        }
    }

    /// A message that may quote personal data (a tool's error): redacted in
    /// any mode but `everything`.
    pub fn message(self, text: &str) -> Cow<'_, str> {
        match self {
            DataStorage::Everything => Cow::Borrowed(text),
            _ => redact_text(text),
        }
    }

    /// A JSON payload (a runtime event's data, a tool's input or output)
    /// as stored: borrowed back unchanged, owned when anything was
    /// replaced or left out. Under `basic_attributes_only` it is an empty
    /// object.
    pub fn payload(self, value: &Value) -> Cow<'_, Value> {
        match self {
            DataStorage::Everything => Cow::Borrowed(value),
            DataStorage::EverythingExceptPii => {
                let mut changed = false;
                let redacted = redact_json(value, &mut changed);
                if changed {
                    Cow::Owned(redacted)
                } else {
                    Cow::Borrowed(value)
                }
            }
            DataStorage::BasicAttributesOnly => {
                if value.as_object().is_some_and(Map::is_empty) {
                    Cow::Borrowed(value)
                } else {
                    Cow::Owned(Value::Object(Map::new()))
                }
            }
        }
    }

    /// Twilio's webhook parameters as the call's event keeps them. The
    /// parameters that name or locate a party (numbers, caller name,
    /// city, zip...) are masked or left out in any mode but `everything`;
    /// `None` (a callback whose tenant is not known) is treated as
    /// `basic_attributes_only`.
    pub fn twilio_params<'a>(
        mode: Option<DataStorage>,
        params: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> Value {
        let mode = mode.unwrap_or(DataStorage::BasicAttributesOnly);
        let mut out = Map::new();
        for (key, value) in params {
            let number = TWILIO_NUMBER_PARAMS.contains(&key);
            let party = TWILIO_PARTY_PARAMS.contains(&key);
            let kept = match mode {
                DataStorage::Everything => Some(value.to_owned()),
                _ if party => None,
                DataStorage::EverythingExceptPii if number => Some(mode.number(value)),
                DataStorage::EverythingExceptPii => Some(redact_text(value).into_owned()),
                DataStorage::BasicAttributesOnly if number => None,
                DataStorage::BasicAttributesOnly => Some(value.to_owned()),
            };
            if let Some(kept) = kept {
                // A repeated key keeps its last value.
                out.insert(key.to_owned(), Value::String(kept));
            }
        }
        Value::Object(out)
    }
}

/// Twilio parameters holding a party's number.
const TWILIO_NUMBER_PARAMS: &[&str] = &["From", "To", "Caller", "Called", "ForwardedFrom"];

/// Twilio parameters naming or locating a party.
const TWILIO_PARTY_PARAMS: &[&str] = &[
    "CallerName",
    "FromCity",
    "FromState",
    "FromZip",
    "FromCountry",
    "ToCity",
    "ToState",
    "ToZip",
    "ToCountry",
    "CallerCity",
    "CallerState",
    "CallerZip",
    "CallerCountry",
    "CalledCity",
    "CalledState",
    "CalledZip",
    "CalledCountry",
];

/// Every digit but the last `keep` replaced by `*` (`+14155550123` with 4
/// kept: `+*******0123`).
pub fn mask_number(number: &str, keep: usize) -> String {
    let digits = number.chars().filter(char::is_ascii_digit).count();
    let mut seen = 0;
    number
        .chars()
        .map(|c| {
            if c.is_ascii_digit() {
                seen += 1;
                if seen + keep <= digits { '*' } else { c }
            } else {
                c
            }
        })
        .collect()
}

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}\b")
        .expect("the e-mail pattern compiles")
});

/// A country code, two check digits, then 11 to 30 letters or digits in
/// groups: shortened from the end until the mod-97 check passes.
static IBAN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b").expect("the IBAN pattern compiles")
});

/// A run of digits with the separators people write numbers with.
static DIGIT_RUN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\+?\(?\b[0-9](?:[0-9]|[ .\-()/]{1,2}[0-9])*\b")
        .expect("the digit pattern compiles")
});

static SSN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^([0-9]{3})[- ]([0-9]{2})[- ]([0-9]{4})$").expect("the SSN pattern compiles")
});

static LOCAL_PHONE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[0-9]{3}[-. ][0-9]{4}$").expect("the phone pattern compiles"));

/// `text` with its personal data replaced by typed placeholders; borrowed
/// back when there was none.
pub fn redact_text(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    if let Cow::Owned(s) = EMAIL.replace_all(&out, "[EMAIL]") {
        out = Cow::Owned(s);
    }
    if let Cow::Owned(s) = IBAN.replace_all(&out, |c: &Captures| iban_replacement(&c[0])) {
        out = Cow::Owned(s);
    }
    let replaced = DIGIT_RUN.replace_all(&out, |c: &Captures| {
        let run = &c[0];
        match classify_digits(run) {
            Some(placeholder) => placeholder.to_owned(),
            None => run.to_owned(),
        }
    });
    if let Cow::Owned(s) = replaced
        && s != out
    {
        out = Cow::Owned(s);
    }
    out
}

/// `[IBAN]` and what followed it, or the candidate unchanged.
fn iban_replacement(candidate: &str) -> String {
    let tokens: Vec<&str> = candidate.split(' ').collect();
    for end in (1..=tokens.len()).rev() {
        let head = tokens[..end].join("");
        if head.len() < 15 {
            break;
        }
        if iban_valid(&head) {
            let rest = tokens[end..].join(" ");
            return if rest.is_empty() {
                "[IBAN]".to_owned()
            } else {
                format!("[IBAN] {rest}")
            };
        }
    }
    candidate.to_owned()
}

/// ISO 13616: length 15 to 34, the first four characters moved to the end,
/// letters as 10..35, the number mod 97 is 1.
fn iban_valid(iban: &str) -> bool {
    if !(15..=34).contains(&iban.len()) {
        return false;
    }
    let (head, tail) = iban.split_at(4);
    let mut rem: u32 = 0;
    for c in tail.chars().chain(head.chars()) {
        let value = match c.to_digit(36) {
            Some(v) => v,
            None => return false,
        };
        rem = if value < 10 {
            (rem * 10 + value) % 97
        } else {
            (rem * 100 + value) % 97
        };
    }
    rem == 1
}

fn luhn_valid(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// What a run of digits is, if it is personal data.
fn classify_digits(run: &str) -> Option<&'static str> {
    let trimmed = run.trim_end_matches([' ', '.', '-', '/', '(']);
    if let Some(ssn) = SSN.captures(trimmed) {
        let (area, group, serial) = (&ssn[1], &ssn[2], &ssn[3]);
        let valid = area != "000"
            && area != "666"
            && !area.starts_with('9')
            && group != "00"
            && serial != "0000";
        return valid.then_some("[SSN]");
    }
    let digits: Vec<u32> = trimmed.chars().filter_map(|c| c.to_digit(10)).collect();
    let n = digits.len();
    if (13..=19).contains(&n) && luhn_valid(&digits) {
        return Some("[CARD]");
    }
    let plus = trimmed.starts_with('+');
    let phone = (plus && (8..=15).contains(&n))
        || (!plus && n == 10)
        || (!plus && n == 11 && matches!(digits.first(), Some(0 | 1)))
        || LOCAL_PHONE.is_match(trimmed);
    phone.then_some("[PHONE]")
}

/// Every string of `value` redacted; an integer that reads as a card or a
/// phone number becomes its placeholder.
fn redact_json(value: &Value, changed: &mut bool) -> Value {
    match value {
        Value::String(s) => match redact_text(s) {
            Cow::Borrowed(_) => value.clone(),
            Cow::Owned(r) => {
                *changed = true;
                Value::String(r)
            }
        },
        Value::Number(n) if n.is_u64() => match classify_digits(&n.to_string()) {
            Some(placeholder) => {
                *changed = true;
                Value::String(placeholder.to_owned())
            }
            None => value.clone(),
        },
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| redact_json(v, changed)).collect())
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), redact_json(v, changed)))
                .collect(),
        ),
        _ => value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn redact(s: &str) -> String {
        redact_text(s).into_owned()
    }

    #[test]
    fn emails_are_replaced() {
        assert_eq!(
            redact("write to Jane.Doe+calls@example.co.uk today"),
            "write to [EMAIL] today"
        );
        assert_eq!(redact("no address @ here"), "no address @ here");
    }

    #[test]
    fn cards_pass_luhn_or_stay() {
        assert_eq!(redact("card 4111 1111 1111 1111 ok"), "card [CARD] ok");
        assert_eq!(redact("card 4111-1111-1111-1111"), "card [CARD]");
        assert_eq!(redact("amex 378282246310005."), "amex [CARD].");
        // An order number of card length failing Luhn is not a card.
        assert_eq!(
            redact("order 4111 1111 1111 1112 shipped"),
            "order 4111 1111 1111 1112 shipped"
        );
        assert_eq!(redact("ref 1234567890123456"), "ref 1234567890123456");
    }

    #[test]
    fn ssns_need_a_valid_area_group_and_serial() {
        assert_eq!(redact("ssn 123-45-6789"), "ssn [SSN]");
        assert_eq!(redact("ssn 123 45 6789."), "ssn [SSN].");
        for kept in [
            "000-45-6789",
            "666-45-6789",
            "912-45-6789",
            "123-00-6789",
            "123-45-0000",
        ] {
            assert_eq!(redact(kept), kept);
        }
    }

    #[test]
    fn ibans_pass_mod_97_or_stay() {
        assert_eq!(
            redact("pay GB82 WEST 1234 5698 7654 32 THANKS"),
            "pay [IBAN] THANKS"
        );
        assert_eq!(redact("DE89370400440532013000"), "[IBAN]");
        // One digit off: the check fails.
        assert_eq!(
            redact("GB82 WEST 1234 5698 7654 33"),
            "GB82 WEST 1234 5698 7654 33"
        );
    }

    #[test]
    fn phones_in_the_usual_forms() {
        for (text, want) in [
            ("call +14155550123 now", "call [PHONE] now"),
            ("call +44 20 7946 0958", "call [PHONE]"),
            ("call (415) 555-0123", "call [PHONE]"),
            ("call 415-555-0123.", "call [PHONE]."),
            ("call 415.555.0123", "call [PHONE]"),
            ("call 020 7946 0958", "call [PHONE]"),
            ("call 555-0123", "call [PHONE]"),
        ] {
            assert_eq!(redact(text), want, "{text}");
        }
    }

    #[test]
    fn near_misses_stay() {
        for text in [
            "on 2026-12-07 at 10:30",
            "it costs 1,250.00 dollars",
            "room 1204, floor 12",
            "order #48213977",
            "zip 94103",
            "version 1.2.3",
        ] {
            assert_eq!(redact(text), text);
        }
        assert!(matches!(redact_text("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn json_is_redacted_throughout_and_flagged() {
        let input = json!({
            "caller": {"email": "a@b.io", "phone": 14155550123u64},
            "notes": ["card 4111111111111111", "order 1234"],
            "count": 3,
        });
        let out = DataStorage::EverythingExceptPii.payload(&input);
        assert!(matches!(out, Cow::Owned(_)), "flagged as changed");
        assert_eq!(
            *out,
            json!({
                "caller": {"email": "[EMAIL]", "phone": "[PHONE]"},
                "notes": ["card [CARD]", "order 1234"],
                "count": 3,
            })
        );
        let plain = json!({"a": "b"});
        let same = DataStorage::EverythingExceptPii.payload(&plain);
        assert!(matches!(same, Cow::Borrowed(v) if *v == plain), "unchanged");
        let none = DataStorage::BasicAttributesOnly.payload(&input);
        assert!(
            matches!(none, Cow::Owned(ref v) if *v == json!({})),
            "emptied"
        );
        assert!(matches!(DataStorage::Everything.payload(&input), Cow::Borrowed(v) if *v == input));
    }

    #[test]
    fn numbers_are_masked_but_the_last_four() {
        assert_eq!(mask_number("+14155550123", 4), "+*******0123");
        assert_eq!(mask_number("+14155550123", 0), "+***********");
        assert_eq!(mask_number("123", 4), "123");
        assert_eq!(
            DataStorage::Everything.number("+14155550123"),
            "+14155550123"
        );
    }

    #[test]
    fn twilio_parameters_by_mode() {
        let params = [
            ("CallSid", "CA1"),
            ("From", "+14155550123"),
            ("To", "+14155559999"),
            ("CallerName", "JANE DOE"),
            ("FromZip", "94103"),
            ("CallStatus", "ringing"),
        ];
        let everything =
            DataStorage::twilio_params(Some(DataStorage::Everything), params.into_iter());
        assert_eq!(everything["CallerName"], "JANE DOE");
        let masked =
            DataStorage::twilio_params(Some(DataStorage::EverythingExceptPii), params.into_iter());
        assert_eq!(
            masked,
            json!({"CallSid": "CA1", "From": "+*******0123", "To": "+*******9999",
                   "CallStatus": "ringing"})
        );
        let basic = json!({"CallSid": "CA1", "CallStatus": "ringing"});
        assert_eq!(
            DataStorage::twilio_params(Some(DataStorage::BasicAttributesOnly), params.into_iter()),
            basic
        );
        assert_eq!(DataStorage::twilio_params(None, params.into_iter()), basic);
    }
}
