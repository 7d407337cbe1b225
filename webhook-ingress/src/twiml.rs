//! TwiML, the XML the inbound webhook answers Twilio with. Every value is
//! escaped (and characters XML cannot carry removed), so no caller-supplied
//! content can break the document.

/// What the inbound webhook answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Twiml {
    /// `<Connect><Stream url>` with `<Parameter>`s, in order.
    ConnectStream {
        url: String,
        parameters: Vec<(String, String)>,
    },
    /// A short `<Say>` then `<Hangup/>`.
    SayHangup(String),
    /// `<Reject/>`: the number is unknown or inactive.
    Reject,
    /// `<Reject reason="busy"/>`: the tenant or agent is at its
    /// concurrent-call limit; the caller hears a busy signal.
    RejectBusy,
    /// An empty `<Response/>`.
    Empty,
}

pub const TWIML_CONTENT_TYPE: &str = "text/xml; charset=utf-8";

/// Removes characters XML 1.0 does not allow at all (C0 controls other than
/// tab, newline and carriage return; U+FFFE and U+FFFF), which no escaping
/// can represent, then escapes `& < > " '`.
pub fn xml_escape(raw: &str) -> String {
    let valid: String = raw
        .chars()
        .filter(|&c| {
            matches!(c, '\t' | '\n' | '\r') || (c >= '\u{20}' && c != '\u{FFFE}' && c != '\u{FFFF}')
        })
        .collect();
    let escaped = quick_xml::escape::escape(valid.as_str()).into_owned();
    // Inside attributes a parser would normalise these to spaces; character
    // references keep them.
    escaped
        .replace('\t', "&#9;")
        .replace('\n', "&#10;")
        .replace('\r', "&#13;")
}

impl Twiml {
    pub fn render(&self) -> String {
        let mut out = String::from(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
        match self {
            Twiml::ConnectStream { url, parameters } => {
                out.push_str(r#"<Response><Connect><Stream url=""#);
                out.push_str(&xml_escape(url));
                out.push_str(r#"">"#);
                for (name, value) in parameters {
                    out.push_str(r#"<Parameter name=""#);
                    out.push_str(&xml_escape(name));
                    out.push_str(r#"" value=""#);
                    out.push_str(&xml_escape(value));
                    out.push_str(r#""/>"#);
                }
                out.push_str("</Stream></Connect></Response>");
            }
            Twiml::SayHangup(text) => {
                out.push_str("<Response><Say>");
                out.push_str(&xml_escape(text));
                out.push_str("</Say><Hangup/></Response>");
            }
            Twiml::Reject => out.push_str("<Response><Reject/></Response>"),
            Twiml::RejectBusy => out.push_str(r#"<Response><Reject reason="busy"/></Response>"#),
            Twiml::Empty => out.push_str("<Response/>"),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twiml_shapes() {
        assert_eq!(
            Twiml::Reject.render(),
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Reject/></Response>"#
        );
        assert_eq!(
            Twiml::RejectBusy.render(),
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Reject reason="busy"/></Response>"#
        );
        assert_eq!(
            Twiml::SayHangup("Hi & bye".into()).render(),
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Say>Hi &amp; bye</Say><Hangup/></Response>"#
        );
        let stream = Twiml::ConnectStream {
            url: "wss://rt.example.com/media".into(),
            parameters: vec![("callSid".into(), "CA1".into())],
        };
        assert_eq!(
            stream.render(),
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://rt.example.com/media"><Parameter name="callSid" value="CA1"/></Stream></Connect></Response>"#
        );
    }

    /// Parses `xml` strictly and returns the attribute values of `<Parameter>`.
    fn parameter_values(xml: &str) -> Vec<String> {
        use quick_xml::events::Event;
        let mut reader = quick_xml::Reader::from_str(xml);
        reader.config_mut().check_end_names = true;
        let mut values = Vec::new();
        loop {
            match reader.read_event().expect("well-formed XML") {
                Event::Eof => break,
                Event::Empty(e) | Event::Start(e) if e.name().as_ref() == b"Parameter" => {
                    for attr in e.attributes() {
                        let attr = attr.expect("attribute");
                        if attr.key.as_ref() == b"value" {
                            values.push(attr.unescape_value().expect("unescapes").into_owned());
                        }
                    }
                }
                _ => {}
            }
        }
        values
    }

    #[test]
    fn twiml_escapes_any_parameter_content() {
        let nasty = "a\"b'c<d>e&f\u{0}g\u{1b}h\u{FFFF}i\tj\nk]]>l</Stream>ñ";
        let xml = Twiml::ConnectStream {
            url: "wss://x/\"><Hangup/>".into(),
            parameters: vec![("token".into(), nasty.into())],
        }
        .render();
        assert!(!xml.contains('\u{0}'));
        let values = parameter_values(&xml);
        assert_eq!(
            values,
            vec!["a\"b'c<d>e&fghi\tj\nk]]>l</Stream>ñ".to_owned()]
        );
    }

    #[test]
    fn escape_round_trips_random_strings() {
        // Every char class, including controls, quotes and markup.
        let alphabet: Vec<char> = "\u{0}\u{8}\t\n\r \"&'<>;#xX0ñ€😀\u{FFFE}]"
            .chars()
            .collect();
        for seed in 0..500u32 {
            let s: String = (0..12)
                .map(|i| {
                    alphabet[((seed.wrapping_mul(31) + i * 7 + seed / 3) as usize) % alphabet.len()]
                })
                .collect();
            let xml = Twiml::ConnectStream {
                url: "wss://x".into(),
                parameters: vec![("p".into(), s.clone())],
            }
            .render();
            let expected: String = s
                .chars()
                .filter(|&c| {
                    matches!(c, '\t' | '\n' | '\r')
                        || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
                })
                .collect();
            assert_eq!(parameter_values(&xml), vec![expected], "input {s:?}");
        }
    }
}

#[cfg(test)]
mod property_tests {
    //! Hostile input: TwiML stays well-formed for any content.
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn twiml_is_well_formed_for_any_parameter(name in ".{0,16}", value in ".{0,64}", say in ".{0,64}") {
            for xml in [
                Twiml::ConnectStream { url: format!("wss://x/{value}"), parameters: vec![(name.clone(), value.clone())] }.render(),
                Twiml::SayHangup(say.clone()).render(),
            ] {
                let mut reader = quick_xml::Reader::from_str(&xml);
                loop {
                    match reader.read_event() {
                        Ok(quick_xml::events::Event::Eof) => break,
                        Ok(_) => {}
                        Err(e) => prop_assert!(false, "malformed XML {xml:?}: {e}"),
                    }
                }
            }
        }
    }
}
