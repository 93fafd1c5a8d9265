//! RFC 8555 wire types: every JSON object the client sends or receives, in the RFC's own vocabulary.
//!
//! Parsing is tolerant, as a client talking to many CAs must be: optional fields default, unknown
//! fields are ignored, and an unknown enum value is kept as `Other(String)` instead of failing the
//! whole response. Requests are built from the same types, with absent options left out.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Declares a string enum whose unknown values are kept as `Other(String)`.
macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* #[doc = concat!("`", $text, "`")] $variant,)+
            /// A value this client does not know, kept verbatim.
            Other(String),
        }

        impl $name {
            /// The value as it appears on the wire.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)+
                    Self::Other(s) => s,
                }
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $($text => Self::$variant,)+
                    other => Self::Other(other.to_owned()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Ok(Self::from(s.as_str()))
            }
        }
    };
}

wire_enum!(
    /// Status of an account object (RFC 8555 section 7.1.2).
    AccountStatus { Valid => "valid", Deactivated => "deactivated", Revoked => "revoked" }
);

wire_enum!(
    /// Status of an order object (RFC 8555 section 7.1.6).
    OrderStatus {
        Pending => "pending",
        Ready => "ready",
        Processing => "processing",
        Valid => "valid",
        Invalid => "invalid",
    }
);

wire_enum!(
    /// Status of an authorization object (RFC 8555 section 7.1.6).
    AuthorizationStatus {
        Pending => "pending",
        Valid => "valid",
        Invalid => "invalid",
        Deactivated => "deactivated",
        Expired => "expired",
        Revoked => "revoked",
    }
);

wire_enum!(
    /// Status of a challenge object (RFC 8555 section 7.1.6).
    ChallengeStatus {
        Pending => "pending",
        Processing => "processing",
        Valid => "valid",
        Invalid => "invalid",
    }
);

wire_enum!(
    /// Challenge types (RFC 8555 section 8, RFC 8737).
    ChallengeType { Http01 => "http-01", Dns01 => "dns-01", TlsAlpn01 => "tls-alpn-01" }
);

wire_enum!(
    /// Identifier types: `dns` (RFC 8555) and `ip` (RFC 8738).
    IdentifierType { Dns => "dns", Ip => "ip" }
);

/// The directory object (RFC 8555 section 7.1.1).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Directory {
    /// The newNonce URL.
    pub new_nonce: String,
    /// The newAccount URL.
    pub new_account: String,
    /// The newOrder URL.
    pub new_order: String,
    /// The newAuthz URL (pre-authorization), when offered.
    #[serde(default)]
    pub new_authz: Option<String>,
    /// The revokeCert URL.
    pub revoke_cert: String,
    /// The keyChange URL.
    pub key_change: String,
    /// RFC 9773 (ARI); absent on CAs that do not offer it.
    #[serde(default)]
    pub renewal_info: Option<String>,
    /// The directory's metadata.
    #[serde(default)]
    pub meta: DirectoryMeta,
}

/// The directory's `meta` field.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryMeta {
    /// The URL of the current terms of service.
    #[serde(default)]
    pub terms_of_service: Option<String>,
    /// The CA's website.
    #[serde(default)]
    pub website: Option<String>,
    /// Host names the CA recognises in CAA records.
    #[serde(default)]
    pub caa_identities: Vec<String>,
    /// True when new accounts need external account binding.
    #[serde(default)]
    pub external_account_required: bool,
    /// Certificate profiles offered by the CA, name to description.
    #[serde(default)]
    pub profiles: BTreeMap<String, String>,
}

/// An identifier: a DNS name or an IP address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identifier {
    /// The type.
    #[serde(rename = "type")]
    pub kind: IdentifierType,
    /// The value (a DNS name or an IP address).
    pub value: String,
}

impl Identifier {
    /// A `dns` identifier, or an `ip` identifier when `name` parses as an IP address (RFC 8738).
    pub fn from_name(name: &str) -> Self {
        match name.parse::<std::net::IpAddr>() {
            Ok(ip) => Self {
                kind: IdentifierType::Ip,
                value: ip.to_string(),
            },
            Err(_) => Self {
                kind: IdentifierType::Dns,
                value: name.to_ascii_lowercase(),
            },
        }
    }
}

/// True for a DNS name a CA can certify: LDH labels of 1 to 63 bytes (no leading or trailing
/// hyphen), at most 253 bytes, optionally behind a `*.` wildcard label.
pub fn is_valid_dns_name(name: &str) -> bool {
    let host = name.strip_prefix("*.").unwrap_or(name);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

/// An account object (RFC 8555 section 7.1.2) as the server returns it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountResource {
    /// The status.
    pub status: AccountStatus,
    /// Contact URLs (`mailto:`).
    #[serde(default)]
    pub contact: Vec<String>,
    /// Agreement to the terms of service.
    #[serde(default)]
    pub terms_of_service_agreed: Option<bool>,
    /// The URL of the account's orders list.
    #[serde(default)]
    pub orders: Option<String>,
}

/// The body of a newAccount request (RFC 8555 section 7.3).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewAccount<'a> {
    /// Contact URLs (`mailto:`).
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub contact: &'a [String],
    /// Agreement to the terms of service.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub terms_of_service_agreed: bool,
    /// Only look up an existing account, never create one.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub only_return_existing: bool,
    /// The external account binding JWS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_account_binding: Option<serde_json::Value>,
}

/// The body of an account update (RFC 8555 sections 7.3.2 and 7.3.6).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountUpdate<'a> {
    /// Contact URLs (`mailto:`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact: Option<&'a [String]>,
    /// The status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<AccountStatus>,
}

/// The body of a newOrder request (RFC 8555 section 7.4, profiles draft, RFC 9773 `replaces`).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewOrder {
    /// The identifiers the order is for.
    pub identifiers: Vec<Identifier>,
    /// The requested or granted notBefore.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    /// The requested or granted notAfter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// The certificate profile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The ARI CertID of the certificate this order replaces (RFC 9773).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

/// An order object (RFC 8555 section 7.1.3).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    /// The status.
    pub status: OrderStatus,
    /// When it expires.
    #[serde(default)]
    pub expires: Option<String>,
    /// The identifiers the order is for.
    #[serde(default)]
    pub identifiers: Vec<Identifier>,
    /// The requested or granted notBefore.
    #[serde(default)]
    pub not_before: Option<String>,
    /// The requested or granted notAfter.
    #[serde(default)]
    pub not_after: Option<String>,
    /// The problem that made it invalid.
    #[serde(default)]
    pub error: Option<Problem>,
    /// The authorization URLs.
    #[serde(default)]
    pub authorizations: Vec<String>,
    /// The finalize URL.
    pub finalize: String,
    /// The certificate URL, once issued.
    #[serde(default)]
    pub certificate: Option<String>,
    /// The certificate profile.
    #[serde(default)]
    pub profile: Option<String>,
    /// The ARI CertID of the certificate this order replaces (RFC 9773).
    #[serde(default)]
    pub replaces: Option<String>,
}

/// An authorization object (RFC 8555 section 7.1.4).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    /// The identifier.
    pub identifier: Identifier,
    /// The status.
    pub status: AuthorizationStatus,
    /// When it expires.
    #[serde(default)]
    pub expires: Option<String>,
    /// The challenges offered.
    #[serde(default)]
    pub challenges: Vec<Challenge>,
    /// True for a wildcard authorization.
    #[serde(default)]
    pub wildcard: bool,
}

/// A challenge object (RFC 8555 section 8).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Challenge {
    /// The type.
    #[serde(rename = "type")]
    pub kind: ChallengeType,
    /// The URL.
    pub url: String,
    /// The status.
    pub status: ChallengeStatus,
    /// The challenge token.
    #[serde(default)]
    pub token: Option<String>,
    /// When the server validated it.
    #[serde(default)]
    pub validated: Option<String>,
    /// The problem that made it invalid.
    #[serde(default)]
    pub error: Option<Problem>,
}

/// The body of a finalize request (RFC 8555 section 7.4).
#[derive(Debug, Clone, Serialize)]
pub struct Finalize {
    /// base64url of the DER CSR.
    pub csr: String,
}

/// The body of a revokeCert request (RFC 8555 section 7.6).
#[derive(Debug, Clone, Serialize)]
pub struct Revocation {
    /// base64url of the DER certificate.
    pub certificate: String,
    /// CRL reason code (RFC 5280 section 5.3.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<u8>,
}

/// The payload of the inner JWS of a key change (RFC 8555 section 7.3.5).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyChange<'a> {
    /// The account URL.
    pub account: &'a str,
    /// The old key as a JWK.
    pub old_key: serde_json::Value,
}

/// A problem document (RFC 7807, RFC 8555 section 6.7).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// The type.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// A human-readable explanation.
    #[serde(default)]
    pub detail: Option<String>,
    /// The status.
    #[serde(default)]
    pub status: Option<u16>,
    /// A URL identifying this occurrence.
    #[serde(default)]
    pub instance: Option<String>,
    /// Problems with single identifiers.
    #[serde(default)]
    pub subproblems: Vec<Subproblem>,
}

/// A subproblem: a problem tied to one identifier (RFC 8555 section 6.7.1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Subproblem {
    /// The type.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// A human-readable explanation.
    #[serde(default)]
    pub detail: Option<String>,
    /// The identifier.
    #[serde(default)]
    pub identifier: Option<Identifier>,
}

/// The `urn:ietf:params:acme:error:` namespace.
pub const ACME_ERROR_NS: &str = "urn:ietf:params:acme:error:";

impl Problem {
    /// The short ACME error name (`badNonce`, `rateLimited`, ...) when the type is in the ACME namespace.
    pub fn acme_type(&self) -> Option<&str> {
        self.kind.as_deref()?.strip_prefix(ACME_ERROR_NS)
    }

    /// True when the type is `urn:ietf:params:acme:error:NAME`.
    pub fn is(&self, name: &str) -> bool {
        self.acme_type() == Some(name)
    }
}

/// The CA's text with every control character (newlines included) escaped as `\u{..}`, so a
/// hostile CA cannot drive a terminal or forge log lines through a problem document.
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = |s: Option<&str>| escape_controls(s.unwrap_or("about:blank"));
        f.write_str(&text(self.kind.as_deref()))?;
        if let Some(detail) = &self.detail {
            write!(f, ": {}", escape_controls(detail))?;
        }
        for sub in &self.subproblems {
            f.write_str("\n  ")?;
            if let Some(id) = &sub.identifier {
                write!(f, "{}: ", escape_controls(&id.value))?;
            }
            f.write_str(&text(sub.kind.as_deref()))?;
            if let Some(detail) = &sub.detail {
                write!(f, ": {}", escape_controls(detail))?;
            }
        }
        Ok(())
    }
}

/// A renewalInfo response (RFC 9773 section 4.2).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenewalInfoResource {
    /// The window in which to renew.
    pub suggested_window: SuggestedWindow,
    /// A page explaining the window, when the CA gives one.
    #[serde(default, rename = "explanationURL")]
    pub explanation_url: Option<String>,
}

/// The suggested renewal window, as RFC 3339 timestamps.
#[derive(Debug, Clone, Deserialize)]
pub struct SuggestedWindow {
    /// The start of the window (RFC 3339).
    pub start: String,
    /// The end of the window (RFC 3339).
    pub end: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8555 section 7.1.1, verbatim.
    const RFC_DIRECTORY: &str = r#"{
     "newNonce": "https://example.com/acme/new-nonce",
     "newAccount": "https://example.com/acme/new-account",
     "newOrder": "https://example.com/acme/new-order",
     "newAuthz": "https://example.com/acme/new-authz",
     "revokeCert": "https://example.com/acme/revoke-cert",
     "keyChange": "https://example.com/acme/key-change",
     "meta": {
       "termsOfService": "https://example.com/acme/terms/2017-5-30",
       "website": "https://www.example.com/",
       "caaIdentities": ["example.com"],
       "externalAccountRequired": false
     }
   }"#;

    /// RFC 8555 section 7.1.2, verbatim.
    const RFC_ACCOUNT: &str = r#"{
     "status": "valid",
     "contact": [
       "mailto:cert-admin@example.org",
       "mailto:admin@example.org"
     ],
     "termsOfServiceAgreed": true,
     "orders": "https://example.com/acme/orders/rzGoeA"
   }"#;

    /// RFC 8555 section 7.1.3, verbatim.
    const RFC_ORDER: &str = r#"{
     "status": "valid",
     "expires": "2016-01-20T14:09:07.99Z",

     "identifiers": [
       { "type": "dns", "value": "www.example.org" },
       { "type": "dns", "value": "example.org" }
     ],

     "notBefore": "2016-01-01T00:00:00Z",
     "notAfter": "2016-01-08T00:00:00Z",

     "authorizations": [
       "https://example.com/acme/authz/PAniVnsZcis",
       "https://example.com/acme/authz/r4HqLzrSrpI"
     ],

     "finalize": "https://example.com/acme/order/TOlocE8rfgo/finalize",

     "certificate": "https://example.com/acme/cert/mAt3xBGaobw"
   }"#;

    /// RFC 8555 section 7.1.4, verbatim.
    const RFC_AUTHZ: &str = r#"{
     "status": "valid",
     "expires": "2015-03-01T14:09:07.99Z",

     "identifier": {
       "type": "dns",
       "value": "www.example.org"
     },

     "challenges": [
       {
         "url": "https://example.com/acme/chall/prV_B7yEyA4",
         "type": "http-01",
         "status": "valid",
         "token": "DGyRejmCefe7v4NfDGDKfA",
         "validated": "2014-12-01T12:05:58.16Z"
       }
     ],

     "wildcard": false
   }"#;

    /// RFC 8555 section 6.7.1, verbatim.
    const RFC_PROBLEM: &str = r#"{
       "type": "urn:ietf:params:acme:error:malformed",
       "detail": "Some of the identifiers requested were rejected",
       "subproblems": [
           {
               "type": "urn:ietf:params:acme:error:malformed",
               "detail": "Invalid underscore in DNS name \"_example.org\"",
               "identifier": {
                   "type": "dns",
                   "value": "_example.org"
               }
           },
           {
               "type": "urn:ietf:params:acme:error:rejectedIdentifier",
               "detail": "This CA will not issue for \"example.net\"",
               "identifier": {
                   "type": "dns",
                   "value": "example.net"
               }
           }
       ]
   }"#;

    /// RFC 9773 section 4.2, verbatim.
    const RFC_RENEWAL_INFO: &str = r#"{
     "suggestedWindow": {
       "start": "2025-01-02T04:00:00Z",
       "end": "2025-01-03T04:00:00Z"
     },
     "explanationURL": "https://acme.example.com/docs/ari"
   }"#;

    #[test]
    fn parses_rfc_directory() {
        let d: Directory = serde_json::from_str(RFC_DIRECTORY).unwrap();
        assert_eq!(d.new_nonce, "https://example.com/acme/new-nonce");
        assert_eq!(d.key_change, "https://example.com/acme/key-change");
        assert_eq!(
            d.new_authz.as_deref(),
            Some("https://example.com/acme/new-authz")
        );
        assert_eq!(
            d.meta.terms_of_service.as_deref(),
            Some("https://example.com/acme/terms/2017-5-30")
        );
        assert_eq!(d.meta.caa_identities, vec!["example.com"]);
        assert!(!d.meta.external_account_required);
        assert!(d.renewal_info.is_none());
        assert!(d.meta.profiles.is_empty());
    }

    #[test]
    fn parses_rfc_account() {
        let a: AccountResource = serde_json::from_str(RFC_ACCOUNT).unwrap();
        assert_eq!(a.status, AccountStatus::Valid);
        assert_eq!(a.contact.len(), 2);
        assert_eq!(a.terms_of_service_agreed, Some(true));
    }

    #[test]
    fn parses_rfc_order() {
        let o: Order = serde_json::from_str(RFC_ORDER).unwrap();
        assert_eq!(o.status, OrderStatus::Valid);
        assert_eq!(o.identifiers[1], Identifier::from_name("example.org"));
        assert_eq!(o.authorizations.len(), 2);
        assert_eq!(
            o.certificate.as_deref(),
            Some("https://example.com/acme/cert/mAt3xBGaobw")
        );
        assert!(o.error.is_none());
    }

    #[test]
    fn parses_rfc_authorization() {
        let a: Authorization = serde_json::from_str(RFC_AUTHZ).unwrap();
        assert_eq!(a.status, AuthorizationStatus::Valid);
        assert_eq!(a.challenges[0].kind, ChallengeType::Http01);
        assert_eq!(
            a.challenges[0].token.as_deref(),
            Some("DGyRejmCefe7v4NfDGDKfA")
        );
        assert_eq!(a.challenges[0].status, ChallengeStatus::Valid);
    }

    #[test]
    fn parses_rfc_problem_with_subproblems() {
        let p: Problem = serde_json::from_str(RFC_PROBLEM).unwrap();
        assert!(p.is("malformed"));
        assert_eq!(p.subproblems.len(), 2);
        assert_eq!(
            p.subproblems[1].identifier.as_ref().unwrap().value,
            "example.net"
        );
        let text = p.to_string();
        assert!(
            text.contains("example.net: urn:ietf:params:acme:error:rejectedIdentifier"),
            "{text}"
        );
    }

    #[test]
    fn parses_rfc_renewal_info() {
        let r: RenewalInfoResource = serde_json::from_str(RFC_RENEWAL_INFO).unwrap();
        assert_eq!(r.suggested_window.start, "2025-01-02T04:00:00Z");
        assert_eq!(
            r.explanation_url.as_deref(),
            Some("https://acme.example.com/docs/ari")
        );
    }

    #[test]
    fn unknown_enum_values_are_kept() {
        let c: Challenge = serde_json::from_str(
            r#"{"type":"dns-account-01","url":"u","status":"someday","token":"t"}"#,
        )
        .unwrap();
        assert_eq!(c.kind, ChallengeType::Other("dns-account-01".into()));
        assert_eq!(c.status, ChallengeStatus::Other("someday".into()));
        assert_eq!(
            serde_json::to_string(&c.kind).unwrap(),
            "\"dns-account-01\""
        );
    }

    #[test]
    fn new_order_leaves_out_absent_options() {
        let o = NewOrder {
            identifiers: vec![
                Identifier::from_name("Example.COM"),
                Identifier::from_name("::1"),
            ],
            ..NewOrder::default()
        };
        assert_eq!(
            serde_json::to_string(&o).unwrap(),
            r#"{"identifiers":[{"type":"dns","value":"example.com"},{"type":"ip","value":"::1"}]}"#
        );
    }

    #[test]
    fn problem_text_cannot_drive_the_terminal() {
        let p: Problem = serde_json::from_str(
            r#"{"type":"urn:ietf:params:acme:error:malformed","detail":"bad\u001b]0;owned\u0007\nerror: forged line\r","subproblems":[{"type":"x\u009b","detail":"d\u001b[2J","identifier":{"type":"dns","value":"a\nb"}}]}"#,
        )
        .unwrap();
        let shown = p.to_string();
        assert!(
            !shown.chars().any(|c| c.is_control() && c != '\n'),
            "{shown:?}"
        );
        assert_eq!(
            shown.matches('\n').count(),
            1,
            "only the subproblem separator: {shown:?}"
        );
        assert!(
            shown.contains("bad\\u{1b}]0;owned\\u{7}\\u{a}error: forged line\\u{d}"),
            "{shown}"
        );
    }
}
