//! Twilio request validation (`X-Twilio-Signature`): the ingress checks
//! signatures, and the tests and the load generator sign as Twilio does.
//!
//! The signature follows the official helper libraries:
//! HMAC-SHA1 with the Auth Token over the URL exactly as Twilio requested it
//! plus every form parameter (`name + value`, keys sorted byte-wise, repeated
//! keys deduplicated and sorted by value), base64, compared in constant time.
//! Twilio signs sometimes with and sometimes without the default port, so
//! both URL forms are tried (and twilio-node's `'` -> `%27` re-encoding).

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha1 = Hmac<Sha1>;

/// The string Twilio signs: the URL followed by `name + value` for every
/// parameter, names sorted byte-wise, each name's distinct values sorted.
pub fn signing_string(url: &str, params: &[(String, String)]) -> String {
    let mut grouped: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (name, value) in params {
        grouped.entry(name).or_default().insert(value);
    }
    let mut out = String::with_capacity(url.len() + params.len() * 24);
    out.push_str(url);
    for (name, values) in grouped {
        for value in values {
            out.push_str(name);
            out.push_str(value);
        }
    }
    out
}

fn mac(auth_token: &str, url: &str, params: &[(String, String)]) -> HmacSha1 {
    // HMAC accepts keys of any length, so this cannot fail; an empty MAC
    // (which verifies nothing) is the safe fallback regardless.
    let mut mac = <HmacSha1 as KeyInit>::new_from_slice(auth_token.as_bytes())
        .unwrap_or_else(|_| <HmacSha1 as KeyInit>::new(&Default::default()));
    mac.update(signing_string(url, params).as_bytes());
    mac
}

/// The signature Twilio would send for `url` and `params` (for tests and
/// load generators; validation never compares strings).
pub fn compute_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(mac(auth_token, url, params).finalize().into_bytes())
}

/// Splits `url` into (before the authority, the authority, the rest).
fn split_authority(url: &str) -> Option<(&str, &str, &str)> {
    let scheme_end = url.find("://")? + 3;
    let rest = &url[scheme_end..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some((&url[..scheme_end], &rest[..end], &rest[end..]))
}

/// The port of an authority (`user:pass@host:port`) and the authority
/// without it.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let host = &authority[host_start..];
    // An IPv6 literal has colons inside its brackets.
    let search_from = host.rfind(']').unwrap_or(0);
    match host[search_from..].rfind(':') {
        Some(i) => {
            let colon = host_start + search_from + i;
            let port = &authority[colon + 1..];
            if port.bytes().all(|b| b.is_ascii_digit()) {
                (&authority[..colon], Some(port))
            } else {
                (authority, None)
            }
        }
        None => (authority, None),
    }
}

/// `url` with any explicit port removed.
pub fn url_without_port(url: &str) -> String {
    match split_authority(url) {
        Some((scheme, authority, rest)) => {
            let (bare, _) = split_port(authority);
            format!("{scheme}{bare}{rest}")
        }
        None => url.to_owned(),
    }
}

/// `url` with the scheme's default port added when it has none.
pub fn url_with_port(url: &str) -> String {
    match split_authority(url) {
        Some((scheme, authority, rest)) => match split_port(authority) {
            (_, Some(_)) => url.to_owned(),
            (bare, None) => {
                let port = if scheme.eq_ignore_ascii_case("https://") {
                    443
                } else {
                    80
                };
                format!("{scheme}{bare}:{port}{rest}")
            }
        },
        None => url.to_owned(),
    }
}

/// twilio-node's legacy form: the query string re-encoded, which turns `'`
/// into `%27`.
fn legacy_query_form(url: &str) -> Option<String> {
    let (before, query) = url.split_once('?')?;
    query
        .contains('\'')
        .then(|| format!("{before}?{}", query.replace('\'', "%27")))
}

/// Every URL form Twilio may have signed.
fn candidate_urls(url: &str) -> Vec<String> {
    let mut candidates = vec![url_without_port(url), url_with_port(url)];
    let legacy: Vec<String> = candidates
        .iter()
        .filter_map(|u| legacy_query_form(u))
        .collect();
    candidates.extend(legacy);
    candidates.dedup();
    candidates
}

/// True when `signature` (the `X-Twilio-Signature` header) is Twilio's
/// signature of `url` and the form `params` under `auth_token`.
pub fn validate(auth_token: &str, url: &str, params: &[(String, String)], signature: &str) -> bool {
    if auth_token.is_empty() {
        return false;
    }
    let Ok(expected) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    if expected.len() != 20 {
        return false;
    }
    // Every candidate is checked so the time taken does not depend on which
    // one matched.
    candidate_urls(url)
        .iter()
        .map(|candidate| {
            mac(auth_token, candidate, params)
                .verify_slice(&expected)
                .is_ok()
        })
        .fold(false, |any, ok| any | ok)
}

/// Validation of a non-form (e.g. JSON) body: the URL must carry
/// `bodySHA256`, the signature is over the URL alone, and the hash must match
/// the raw body.
pub fn validate_with_body(auth_token: &str, url: &str, body: &[u8], signature: &str) -> bool {
    let Some(query) = url
        .split_once('?')
        .map(|(_, q)| q.split('#').next().unwrap_or(q))
    else {
        return false;
    };
    let Some(claimed) = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "bodySHA256")
        .map(|(_, v)| v.into_owned())
    else {
        return false;
    };
    let actual = Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let hash_ok: bool = actual.as_bytes().ct_eq(claimed.as_bytes()).into();
    validate(auth_token, url, &[], signature) & hash_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "12345";
    const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn five() -> Vec<(String, String)> {
        p(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ])
    }

    const BODY: &[u8] = br#"{"property": "value", "boolean": true}"#;
    const BODY_HASH: &str = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";

    #[test]
    fn signing_string_matches_the_worked_example() {
        assert_eq!(
            signing_string(URL, &five()),
            "https://mycompany.com/myapp.php?foo=1&bar=2CallSidCA1234567890ABCDECaller+14158675309Digits1234From+14158675309To+18005551212"
        );
    }

    #[test]
    fn vector_a_basic_form() {
        assert!(validate(
            TOKEN,
            URL,
            &five(),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        assert_eq!(
            compute_signature(TOKEN, URL, &five()),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
    }

    #[test]
    fn vector_b_repeated_keys() {
        let params = p(&[
            ("Sid", "CA123"),
            ("SidAccount", "AC123"),
            ("Digits", "5678"),
            ("Digits", "1234"),
            ("Digits", "1234"),
        ]);
        assert!(validate(
            TOKEN,
            URL,
            &params,
            "IK+Dwps556ElfBT0I3Rgjkr1wJU="
        ));
    }

    #[test]
    fn vector_c_d_e_json_body() {
        let c = format!("{URL}&bodySHA256={BODY_HASH}");
        assert!(validate_with_body(
            TOKEN,
            &c,
            BODY,
            "a9nBmqA0ju/hNViExpshrM61xv4="
        ));
        let d = format!("https://mycompany.com/myapp.php?bodySHA256={BODY_HASH}");
        assert!(validate_with_body(
            TOKEN,
            &d,
            BODY,
            "y77kIzt2vzLz71DgmJGsen2scGs="
        ));
        let e = format!(
            "{URL}&bodySHA256=44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert!(validate_with_body(
            TOKEN,
            &e,
            b"{}",
            "Ldidvp12m26NI7eqEvxnEpkd9Hc="
        ));
        // The body must match its hash.
        assert!(!validate_with_body(
            TOKEN,
            &c,
            b"{}",
            "a9nBmqA0ju/hNViExpshrM61xv4="
        ));
        // A body without bodySHA256 fails even with the form signature.
        assert!(!validate_with_body(
            TOKEN,
            URL,
            BODY,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
    }

    #[test]
    fn vectors_f_g_h_i_ports() {
        assert!(validate(
            TOKEN,
            URL,
            &five(),
            "kvajT1Ptam85bY51eRf/AJRuM3w="
        ));
        assert!(validate(
            TOKEN,
            "http://mycompany.com/myapp.php?foo=1&bar=2",
            &five(),
            "0ZXoZLH/DfblKGATFgpif+LLRf4="
        ));
        assert!(validate(
            TOKEN,
            "http://mycompany.com:1234/myapp.php?foo=1&bar=2",
            &five(),
            "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="
        ));
        assert!(validate(
            TOKEN,
            "https://mycompany.com:1234/myapp.php?foo=1&bar=2",
            &five(),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
    }

    #[test]
    fn vector_j_array_param_order_does_not_matter() {
        let a = p(&[
            ("MessagingBinding.Address", "+1325xxxxxxx"),
            ("MessagingBinding.Address", "+1415xxxxxxx"),
        ]);
        let b = p(&[
            ("MessagingBinding.Address", "+1415xxxxxxx"),
            ("MessagingBinding.Address", "+1325xxxxxxx"),
        ]);
        assert!(validate(TOKEN, URL, &a, "83O6e2vORAoJHUNzJjDWN1jz+BA="));
        assert!(validate(TOKEN, URL, &b, "83O6e2vORAoJHUNzJjDWN1jz+BA="));
    }

    #[test]
    fn vectors_k_to_n_urls_and_queries() {
        assert!(validate(TOKEN, URL, &[], "zYQTYrRWXE7LtzbG4PfP7/bkkGo="));
        assert!(validate(
            TOKEN,
            "https://mycompany.com/myapp.php",
            &five(),
            "1xaxFBvyzXYvWplzNOSs28HWO94="
        ));
        assert!(validate(
            TOKEN,
            "https://mycompany.com/myapp.php?foo=1&bar=2&type=thiswontbeusedinthesignaturegeneratorandsoshouldbeignored",
            &five(),
            "hYkNsTBttoNGkyCS0p+wWmQoRTg="
        ));
        assert!(validate(
            TOKEN,
            "https://mycompany.com/myapp.php?foo=hello%20world&bar=test%2Bvalue",
            &five(),
            "er2tvAP1Wx+iuTTE2BPgvEaN1cs="
        ));
    }

    #[test]
    fn vectors_o_to_r_values_and_keys() {
        let o = p(&[
            ("Message", "Hello & goodbye! @#$%^*()"),
            ("From", "+1 (415) 867-5309"),
            ("Special", "unicode: ñáéíóú"),
        ]);
        assert!(validate(TOKEN, URL, &o, "dCPiR4WtQ6QFN6pJh81CtlCcWLQ="));
        let pp = p(&[
            ("Digits", ""),
            ("CallSid", "CA1234567890ABCDE"),
            ("EmptyParam", ""),
        ]);
        assert!(validate(TOKEN, URL, &pp, "9HHp/OqQMEwdrVebHDdA/+tqjX8="));
        let q = p(&[
            ("Zebra", "last"),
            ("Alpha", "first"),
            ("Beta", "second"),
            ("Gamma", "third"),
        ]);
        assert!(validate(TOKEN, URL, &q, "enveUe73ZTVLAekHxez3Qx6JuuQ="));
        let r = p(&[
            ("callSid", "lowercase"),
            ("CallSid", "uppercase"),
            ("CALLSID", "allcaps"),
        ]);
        assert!(validate(TOKEN, URL, &r, "jDK7WKT8wiNrwggd4ceTv4e1MJ4="));
    }

    #[test]
    fn vectors_s_t_u_v_utf8_userinfo_legacy() {
        assert!(validate(
            TOKEN,
            "https://mycompany.com/webhook/España?año=2023",
            &five(),
            "G/Hx6mqqnjUNlPAoi2Sp9bGst0g="
        ));
        let t = "https://user:pass@mycompany.com/myapp.php?foo=1&bar=2";
        assert!(validate(TOKEN, t, &five(), "CukzLTc1tT5dXEDIHm/tKBanW10="));
        assert!(validate(TOKEN, t, &five(), "ZQFR1PTIZXF2MXB8ZnKCvnnA+rI="));
        let u = "https://user@mycompany.com/myapp.php?foo=1&bar=2";
        assert!(validate(TOKEN, u, &five(), "2YRLlVAflCqxaNicjMpJcSTgzSs="));
        assert!(validate(TOKEN, u, &five(), "aZfj4hyX1MLZhSS6QIL18Vn2/RA="));
        assert!(validate(
            TOKEN,
            "https://mycompany.com/myapp.php?foo=1&bar=2&Body=It's+amazing",
            &five(),
            "TfZzewPq8wqrGlMfyAud8+/IvJ0="
        ));
    }

    #[test]
    fn vector_w_empty_body_hash() {
        let hex = Sha256::digest(b"{}")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        assert_eq!(
            hex,
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    #[test]
    fn negative_cases() {
        assert!(!validate(
            TOKEN,
            URL,
            &five(),
            "NOTRSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        assert!(!validate(TOKEN, URL, &five(), ""));
        assert!(!validate(TOKEN, URL, &five(), "not base64 at all!"));
        assert!(!validate(
            "54321",
            URL,
            &five(),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        assert!(!validate("", URL, &five(), "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
        let extra = format!("{URL}&somethingUnexpected=true");
        assert!(!validate(
            TOKEN,
            &extra,
            &five(),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        let mut more = five();
        more.push(("Extra".into(), "x".into()));
        assert!(!validate(TOKEN, URL, &more, "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
    }

    #[test]
    fn port_forms() {
        assert_eq!(url_with_port("https://a.b/x?y=1"), "https://a.b:443/x?y=1");
        assert_eq!(url_with_port("http://a.b"), "http://a.b:80");
        assert_eq!(url_with_port("http://a.b:8080/x"), "http://a.b:8080/x");
        assert_eq!(
            url_without_port("http://u:p@a.b:8080/x"),
            "http://u:p@a.b/x"
        );
        assert_eq!(url_without_port("http://[::1]:4001/x"), "http://[::1]/x");
        assert_eq!(url_with_port("http://[::1]/x"), "http://[::1]:80/x");
    }
}

#[cfg(test)]
mod property_tests {
    //! Hostile input: signatures hold for any content.
    use super::*;
    use proptest::prelude::*;

    fn params() -> impl Strategy<Value = Vec<(String, String)>> {
        proptest::collection::vec((".{0,12}", ".{0,24}"), 0..8)
    }

    proptest! {
        #[test]
        fn signed_params_validate_and_any_change_fails(
            token in "[a-f0-9]{32}", path in "[a-z/]{0,20}", params in params(), extra in ".{1,8}"
        ) {
            let url = format!("https://voice.example.com/{path}?x=1");
            let signature = compute_signature(&token, &url, &params);
            prop_assert!(validate(&token, &url, &params, &signature));
            let mut changed = params.clone();
            changed.push(("Injected".into(), extra));
            prop_assert!(!validate(&token, &url, &changed, &signature));
            prop_assert!(!validate("other-token", &url, &params, &signature));
        }

        #[test]
        fn arbitrary_signatures_and_urls_never_panic(
            url in ".{0,80}", params in params(), signature in ".{0,64}", body in proptest::collection::vec(any::<u8>(), 0..64)
        ) {
            let _ = validate("t", &url, &params, &signature);
            let _ = validate_with_body("t", &url, &body, &signature);
            let _ = url_with_port(&url);
            let _ = url_without_port(&url);
        }
    }
}
