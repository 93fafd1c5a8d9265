//! JSON Web Signatures as ACME uses them (RFC 8555 section 6.2): flattened JSON serialization,
//! ES256/ES384 account keys, the JWK and its RFC 7638 thumbprint, key authorizations, the dns-01
//! digest, external account binding (HS256) and the inner JWS of a key rollover.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256, Sha384, Sha512};

use super::error::Error;
use super::key::KeyPair;

/// base64url without padding (RFC 7515 section 2).
pub fn b64(data: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// How a request identifies its signer: by its public key (newAccount, revocation by certificate
/// key) or by its account URL (everything else).
#[derive(Debug, Clone, Copy)]
pub enum Signer<'a> {
    /// Embed the JWK in the protected header.
    Jwk(&'a KeyPair),
    /// Name the account URL as `kid`.
    Kid(&'a KeyPair, &'a str),
}

impl Signer<'_> {
    fn key(&self) -> &KeyPair {
        match self {
            Signer::Jwk(k) | Signer::Kid(k, _) => k,
        }
    }
}

/// The public JWK of an account key, members in the lexicographic order RFC 7638 requires.
pub fn jwk(key: &KeyPair) -> Value {
    if let Some((n, e)) = key.rsa_public() {
        return json!({ "e": b64(e), "kty": "RSA", "n": b64(n) });
    }
    let (x, y) = key.public_xy();
    // serde_json's map is sorted by key, which is exactly the RFC 7638 canonical order.
    json!({ "crv": key.key_type().jwk_crv(), "kty": "EC", "x": b64(x), "y": b64(y) })
}

/// RFC 7638 thumbprint: base64url(SHA-256(canonical JSON of the required members)).
pub fn thumbprint_of(jwk: &Value) -> String {
    let canonical = match jwk.get("kty").and_then(Value::as_str) {
        Some("RSA") => json!({ "e": jwk["e"], "kty": "RSA", "n": jwk["n"] }),
        Some("OKP") => json!({ "crv": jwk["crv"], "kty": "OKP", "x": jwk["x"] }),
        _ => json!({ "crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"], "y": jwk["y"] }),
    };
    b64(Sha256::digest(canonical.to_string().as_bytes()))
}

/// The thumbprint of an account key.
pub fn thumbprint(key: &KeyPair) -> String {
    thumbprint_of(&jwk(key))
}

/// The key authorization for a challenge token (RFC 8555 section 8.1).
pub fn key_authorization(token: &str, key: &KeyPair) -> String {
    format!("{token}.{}", thumbprint(key))
}

/// The TXT record value for dns-01 (RFC 8555 section 8.4).
pub fn dns01_digest(key_authorization: &str) -> String {
    b64(Sha256::digest(key_authorization.as_bytes()))
}

/// True when `token` is base64url with no padding, as RFC 8555 section 8.1 requires, and of a sane
/// length. Anything else (dots, slashes, `=`) is refused before it can name a file.
pub fn is_valid_token(token: &str) -> bool {
    (1..=256).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A flattened JWS (RFC 7515 section 7.2.2).
#[derive(Debug, Clone, Serialize)]
pub struct Jws {
    /// The protected header, base64url.
    pub protected: String,
    /// The payload, base64url.
    pub payload: String,
    /// The signature, base64url.
    pub signature: String,
}

/// Signs `payload` (None: POST-as-GET, an empty payload) for `url` with the given nonce.
pub fn sign<T: Serialize + ?Sized>(
    signer: Signer<'_>,
    nonce: Option<&str>,
    url: &str,
    payload: Option<&T>,
) -> Result<Jws, Error> {
    let key = signer.key();
    let mut header = json!({ "alg": key.key_type().jws_alg(), "url": url });
    if let Some(nonce) = nonce {
        header["nonce"] = Value::String(nonce.to_owned());
    }
    match signer {
        Signer::Jwk(k) => header["jwk"] = jwk(k),
        Signer::Kid(_, kid) => header["kid"] = Value::String(kid.to_owned()),
    }
    let protected = b64(header.to_string());
    let payload = match payload {
        Some(p) => b64(serde_json::to_vec(p).map_err(|e| Error::Key(format!("payload: {e}")))?),
        None => String::new(),
    };
    let signature = b64(key.sign_raw(format!("{protected}.{payload}").as_bytes()));
    Ok(Jws {
        protected,
        payload,
        signature,
    })
}

/// The MAC algorithm of an external account binding (RFC 8555 section 7.3.4 allows any MAC
/// algorithm of RFC 7518; CAs hand out HS256 keys, some HS384 or HS512).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EabAlgorithm {
    /// HMAC with SHA-256.
    #[default]
    Hs256,
    /// HMAC with SHA-384.
    Hs384,
    /// HMAC with SHA-512.
    Hs512,
}

impl EabAlgorithm {
    /// The JWS `alg` value.
    pub fn as_str(self) -> &'static str {
        match self {
            EabAlgorithm::Hs256 => "HS256",
            EabAlgorithm::Hs384 => "HS384",
            EabAlgorithm::Hs512 => "HS512",
        }
    }

    fn mac(self, key: &[u8], data: &[u8]) -> Result<Vec<u8>, Error> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Result<Vec<u8>, Error> {
            let mut mac = <M as Mac>::new_from_slice(key)
                .map_err(|e| Error::Key(format!("EAB HMAC key: {e}")))?;
            mac.update(data);
            Ok(mac.finalize().into_bytes().to_vec())
        }
        match self {
            EabAlgorithm::Hs256 => run::<Hmac<Sha256>>(key, data),
            EabAlgorithm::Hs384 => run::<Hmac<Sha384>>(key, data),
            EabAlgorithm::Hs512 => run::<Hmac<Sha512>>(key, data),
        }
    }
}

/// A name that is not one of the EAB MAC algorithms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an EAB algorithm (HS256, HS384, HS512)")]
pub struct UnknownEabAlgorithm(pub String);

impl std::str::FromStr for EabAlgorithm {
    type Err = UnknownEabAlgorithm;

    fn from_str(s: &str) -> Result<Self, UnknownEabAlgorithm> {
        match s.to_ascii_uppercase().as_str() {
            "HS256" => Ok(EabAlgorithm::Hs256),
            "HS384" => Ok(EabAlgorithm::Hs384),
            "HS512" => Ok(EabAlgorithm::Hs512),
            _ => Err(UnknownEabAlgorithm(s.to_owned())),
        }
    }
}

/// External account binding (RFC 8555 section 7.3.4): a JWS over the account JWK, MACed
/// with the key the CA issued (given base64url-encoded, as CAs hand it out).
pub fn external_account_binding(
    account_key: &KeyPair,
    eab_kid: &str,
    eab_hmac_key_b64: &str,
    alg: EabAlgorithm,
    new_account_url: &str,
) -> Result<Value, Error> {
    let mac_key = decode_b64_lenient(eab_hmac_key_b64)
        .ok_or_else(|| Error::Key("the EAB HMAC key is not valid base64url (or base64)".into()))?;
    if mac_key.is_empty() {
        return Err(Error::Key("the EAB HMAC key is empty".into()));
    }
    let protected =
        b64(json!({ "alg": alg.as_str(), "kid": eab_kid, "url": new_account_url }).to_string());
    let payload = b64(jwk(account_key).to_string());
    let signature = b64(alg.mac(&mac_key, format!("{protected}.{payload}").as_bytes())?);
    Ok(json!({ "protected": protected, "payload": payload, "signature": signature }))
}

/// Decodes base64url without padding (RFC 7515 section 2); padding is tolerated.
pub fn decode_b64(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('='))
}

/// Decodes base64url or standard base64, with or without padding.
fn decode_b64_lenient(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE};
    let s = s.trim();
    [&URL_SAFE_NO_PAD, &URL_SAFE, &STANDARD, &STANDARD_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(s).ok())
}

/// The inner JWS of a key rollover (RFC 8555 section 7.3.5): signed by the new key, carrying its
/// JWK, no nonce, payload naming the account and its old key.
pub fn key_change_inner(
    new_key: &KeyPair,
    old_key: &KeyPair,
    account_url: &str,
    key_change_url: &str,
) -> Result<Jws, Error> {
    let payload = super::types::KeyChange {
        account: account_url,
        old_key: jwk(old_key),
    };
    sign(Signer::Jwk(new_key), None, key_change_url, Some(&payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::key::KeyType;

    fn decode(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    /// RFC 7638 section 3.1: the example RSA key and its thumbprint.
    #[test]
    fn rfc7638_thumbprint_example() {
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            thumbprint_of(&jwk),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn jws_signature_verifies_and_header_is_complete() {
        for kind in [KeyType::P256, KeyType::P384] {
            let key = KeyPair::generate(kind);
            let jws = sign(
                Signer::Kid(&key, "https://ca/acct/1"),
                Some("nonce-1"),
                "https://ca/order",
                Some(&json!({"a": 1})),
            )
            .unwrap();
            let header: Value = serde_json::from_slice(&decode(&jws.protected)).unwrap();
            assert_eq!(header["alg"], kind.jws_alg());
            assert_eq!(header["kid"], "https://ca/acct/1");
            assert_eq!(header["nonce"], "nonce-1");
            assert_eq!(header["url"], "https://ca/order");
            assert!(header.get("jwk").is_none());
            let payload: Value = serde_json::from_slice(&decode(&jws.payload)).unwrap();
            assert_eq!(payload, json!({"a": 1}));
            let signed = format!("{}.{}", jws.protected, jws.payload);
            assert!(key.verify_raw(signed.as_bytes(), &decode(&jws.signature)));
            assert!(!key.verify_raw(b"tampered", &decode(&jws.signature)));
        }
    }

    #[test]
    fn post_as_get_has_empty_payload_and_jwk_signer_embeds_key() {
        let key = KeyPair::generate(KeyType::P384);
        let jws = sign::<Value>(Signer::Jwk(&key), Some("n"), "https://ca/x", None).unwrap();
        assert_eq!(jws.payload, "");
        let header: Value = serde_json::from_slice(&decode(&jws.protected)).unwrap();
        assert_eq!(header["jwk"], jwk(&key));
        assert!(header.get("kid").is_none());
        assert_eq!(header["jwk"]["crv"], "P-384");
        assert_eq!(decode(header["jwk"]["x"].as_str().unwrap()).len(), 48);
    }

    #[test]
    fn thumbprint_is_stable_and_key_authorization_has_its_form() {
        let key = KeyPair::generate(KeyType::P256);
        let t = thumbprint(&key);
        assert_eq!(t, thumbprint_of(&jwk(&key)));
        assert_eq!(decode(&t).len(), 32);
        assert_eq!(key_authorization("tok", &key), format!("tok.{t}"));
    }

    /// RFC 8555 section 8.4 gives the digest construction; check it against a hand computation.
    #[test]
    fn dns01_digest_is_sha256_of_key_authorization() {
        let ka = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.nP1qzpXGymHBrUEepNY9HCsQk7K8KhOypzEt62jcerQ";
        assert_eq!(dns01_digest(ka), b64(Sha256::digest(ka.as_bytes())));
        assert_eq!(dns01_digest(ka).len(), 43);
    }

    #[test]
    fn tokens_must_be_base64url() {
        assert!(is_valid_token(
            "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
        ));
        for bad in [
            "",
            "../../etc/x",
            "a/b",
            "a.b",
            "abc=",
            "a b",
            "ä",
            &"a".repeat(257),
        ] {
            assert!(!is_valid_token(bad), "{bad:?} accepted");
        }
    }

    /// Each algorithm names itself in the protected header and MACs `protected.payload` with
    /// its own hash (checked by an independent MAC of the same input).
    #[test]
    fn eab_is_a_mac_over_the_account_jwk_in_each_algorithm() {
        let key = KeyPair::generate(KeyType::P256);
        let mac_key = b"0123456789abcdef0123456789abcdef";
        for (alg, name) in [
            (EabAlgorithm::Hs256, "HS256"),
            (EabAlgorithm::Hs384, "HS384"),
            (EabAlgorithm::Hs512, "HS512"),
        ] {
            assert_eq!(name.parse::<EabAlgorithm>().unwrap(), alg);
            let eab =
                external_account_binding(&key, "kid-1", &b64(mac_key), alg, "https://ca/new-acct")
                    .unwrap();
            let protected: Value =
                serde_json::from_slice(&decode(eab["protected"].as_str().unwrap())).unwrap();
            assert_eq!(
                protected,
                json!({"alg": name, "kid": "kid-1", "url": "https://ca/new-acct"})
            );
            let payload: Value =
                serde_json::from_slice(&decode(eab["payload"].as_str().unwrap())).unwrap();
            assert_eq!(payload, jwk(&key));
            let input = format!(
                "{}.{}",
                eab["protected"].as_str().unwrap(),
                eab["payload"].as_str().unwrap()
            );
            let signature = decode(eab["signature"].as_str().unwrap());
            match alg {
                EabAlgorithm::Hs256 => {
                    let mut mac = Hmac::<Sha256>::new_from_slice(mac_key).unwrap();
                    mac.update(input.as_bytes());
                    mac.verify_slice(&signature).unwrap();
                }
                EabAlgorithm::Hs384 => {
                    let mut mac = Hmac::<Sha384>::new_from_slice(mac_key).unwrap();
                    mac.update(input.as_bytes());
                    mac.verify_slice(&signature).unwrap();
                }
                EabAlgorithm::Hs512 => {
                    let mut mac = Hmac::<Sha512>::new_from_slice(mac_key).unwrap();
                    mac.update(input.as_bytes());
                    mac.verify_slice(&signature).unwrap();
                }
            }
        }
        assert!("HS1".parse::<EabAlgorithm>().is_err());
        assert!(external_account_binding(&key, "k", "%%%", EabAlgorithm::Hs256, "u").is_err());
    }

    #[test]
    fn key_change_inner_is_signed_by_the_new_key() {
        let old = KeyPair::generate(KeyType::P256);
        let new = KeyPair::generate(KeyType::P384);
        let jws =
            key_change_inner(&new, &old, "https://ca/acct/1", "https://ca/key-change").unwrap();
        let header: Value = serde_json::from_slice(&decode(&jws.protected)).unwrap();
        assert!(header.get("nonce").is_none());
        assert_eq!(header["jwk"], jwk(&new));
        let payload: Value = serde_json::from_slice(&decode(&jws.payload)).unwrap();
        assert_eq!(payload["oldKey"], jwk(&old));
        assert_eq!(payload["account"], "https://ca/acct/1");
        assert!(new.verify_raw(
            format!("{}.{}", jws.protected, jws.payload).as_bytes(),
            &decode(&jws.signature)
        ));
    }

    /// RFC 7515 appendix A.2: the RSA key (a JWK, the form certbot stores account keys in) and
    /// the RS256 signature of the example signing input. RSASSA-PKCS1-v1_5 is deterministic,
    /// so ours must be the RFC's, byte for byte.
    #[test]
    fn rs256_matches_rfc_7515_appendix_a2() {
        let rfc = json!({
            "kty": "RSA",
            "n": "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ",
            "e": "AQAB",
            "d": "Eq5xpGnNCivDflJsRQBXHx1hdR1k6Ulwe2JZD50LpXyWPEAeP88vLNO97IjlA7_GQ5sLKMgvfTeXZx9SE-7YwVol2NXOoAJe46sui395IW_GO-pWJ1O0BkTGoVEn2bKVRUCgu-GjBVaYLU6f3l9kJfFNS3E0QbVdxzubSu3Mkqzjkn439X0M_V51gfpRLI9JYanrC4D4qAdGcopV_0ZHHzQlBjudU2QvXt4ehNYTCBr6XCLQUShb1juUO1ZdiYoFaFQT5Tw8bGUl_x_jTj3ccPDVZFD9pIuhLhBOneufuBiB4cS98l2SR_RQyGWSeWjnczT0QU91p1DhOVRuOopznQ",
            "p": "4BzEEOtIpmVdVEZNCqS7baC4crd0pqnRH_5IB3jw3bcxGn6QLvnEtfdUdiYrqBdss1l58BQ3KhooKeQTa9AB0Hw_Py5PJdTJNPY8cQn7ouZ2KKDcmnPGBY5t7yLc1QlQ5xHdwW1VhvKn-nXqhJTBgIPgtldC-KDV5z-y2XDwGUc",
            "q": "uQPEfgmVtjL0Uyyx88GZFF1fOunH3-7cepKmtH4pxhtCoHqpWmT8YAmZxaewHgHAjLYsp1ZSe7zFYHj7C6ul7TjeLQeZD_YwD66t62wDmpe_HlB-TnBA-njbglfIsRLtXlnDzQkv5dTltRJ11BKBBypeeF6689rjcJIDEz9RWdc",
            // The CRT values, which the RFC lists too (d mod p-1, d mod q-1, q^-1 mod p).
            "dp": "BwKfV3Akq5_MFZDFZCnW-wzl-CCo83WoZvnLQwCTeDv8uzluRSnm71I3QCLdhrqE2e9YkxvuxdBfpT_PI7Yz-FOKnu1R6HsJeDCjn12Sk3vmAktV2zb34MCdy7cpdTh_YVr7tss2u6vneTwrA86rZtu5Mbr1C1XsmvkxHQAdYo0",
            "dq": "h_96-mK1R_7glhsum81dZxjTnYynPbZpHziZjeeHcXYsXaaMwkOlODsWa7I9xXDoRwbKgB719rrmI2oKr6N3Do9U0ajaHF-NKJnwgjMd2w9cjz3_-kyNlxAr2v4IKhGNpmM5iIgOS1VZnOZ68m6_pbLBSp3nssTdlqvd0tIiTHU",
            "qi": "IYd7DHOhrWvxkwPQsRM2tOgrjbcrfvtQJipd-DlcxyVuuM9sQLdgjVk2oy26F0EmpScGLq2MowX7fhd_QJQ3ydy5cY7YIBi87w93IKLEdfnbJtoOPLUW0ITrJReOgo1cq9SbsxYawBgfp_gh6A5603k2-ZQwVK0JKSHuLFkuQ3U",
        });
        let key = KeyPair::from_jwk(&rfc).unwrap();
        assert_eq!(key.key_type(), KeyType::Rsa2048);
        let input = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
        let signature = "cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
        assert_eq!(b64(key.sign_raw(input.as_bytes())), signature);
        // The public JWK we send is the RFC's (n and e).
        let public = jwk(&key);
        assert_eq!((&public["n"], &public["e"]), (&rfc["n"], &rfc["e"]));
    }
}
