//! The Transit operations: batched encrypt, decrypt and rewrap (split under OpenBao's request
//! limits, partial failures per item), data keys, key information and rotation.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::error::item_error;
use crate::transport::{small_json, On403};
use crate::{Client, Decrypted, Error, ErrorKind, Item, ItemError, ItemErrorKind};

/// A Transit key's properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// Key type, e.g. `aes256-gcm96`.
    pub key_type: String,
    /// Whether the key is derived (needs a `context`).
    pub derived: bool,
    /// Latest version.
    pub latest_version: u32,
    /// Oldest version that may decrypt.
    pub min_decryption_version: u32,
    /// Whether the key type can encrypt.
    pub supports_encryption: bool,
}

/// JSON strings one request may carry (OpenBao's default limit is 1000; keep a margin).
pub(crate) const MAX_JSON_STRINGS: usize = 900;

/// Body bytes one request may carry.
pub(crate) const MAX_BODY: usize = 16 * 1024 * 1024;

/// A batch answer (`data.batch_results`), parsed into exactly the fields used; plaintexts go
/// straight into wiping strings.
#[derive(serde::Deserialize)]
pub(crate) struct BatchAnswer {
    data: Option<BatchData>,
    #[serde(default)]
    errors: Vec<String>,
}

#[derive(serde::Deserialize)]
pub(crate) struct BatchData {
    batch_results: Option<Vec<BatchItem>>,
}

/// One item of a batch answer.
#[derive(serde::Deserialize)]
pub(crate) struct BatchItem {
    ciphertext: Option<String>,
    plaintext: Option<Zeroizing<String>>,
    #[serde(default)]
    error: String,
}

#[derive(serde::Deserialize)]
pub(crate) struct DataKeyAnswer {
    data: Option<DataKeyData>,
}

#[derive(serde::Deserialize)]
pub(crate) struct DataKeyData {
    plaintext: Zeroizing<String>,
    ciphertext: String,
}

/// Writes a JSON string of base64 or Transit text (no character of which needs escaping).
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// One `batch_input` object: the given fields, and the item's associated data if any.
pub(crate) fn entry(fields: &[(&str, &Zeroizing<String>)], it: &Item) -> Zeroizing<String> {
    let mut e = Zeroizing::new(String::with_capacity(fields.iter().map(|f| f.1.len() + 20).sum::<usize>() + 64));
    e.push('{');
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            e.push(',');
        }
        push_json_str(&mut e, k);
        e.push(':');
        push_json_str(&mut e, v);
    }
    if let Some(a) = &it.associated_data {
        e.push_str(",\"associated_data\":");
        push_json_str(&mut e, &b64(a));
    }
    e.push('}');
    e
}

pub(crate) fn b64(v: &[u8]) -> String {
    STANDARD.encode(v)
}

/// Transit requests of one call outstanding at once when its items need several (a bulk
/// statement, a migration batch, many backends' values coalesced): OpenBao serves them on
/// all its cores while the worker waits.
pub const TRANSIT_IN_FLIGHT: usize = 4;

/// The body of one batch call, `{"batch_input":[…]}`, in a wiping buffer (it carries
/// plaintexts).
fn batch_body(entries: &[Zeroizing<String>]) -> Zeroizing<String> {
    let mut body = Zeroizing::new(String::with_capacity(entries.iter().map(|e| e.len() + 1).sum::<usize>() + 20));
    body.push_str("{\"batch_input\":[");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(e);
    }
    body.push_str("]}");
    body
}

/// One operation of [`Client::batch_runs`]: `what` (encrypt, decrypt, rewrap) of `items` with
/// `key`, each item a `batch_input` entry by `entry_of`.
struct Run<'a> {
    what: &'a str,
    key: &'a str,
    items: &'a [Item],
    entry_of: &'a dyn Fn(&Item) -> Zeroizing<String>,
}

/// Encrypt or decrypt, for [`Client::transit_batches`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransitOp {
    /// `transit/encrypt/<key>`.
    Encrypt,
    /// `transit/decrypt/<key>`.
    Decrypt,
}

/// One set of items for [`Client::transit_batches`].
pub struct TransitBatch<'a> {
    /// Encrypt or decrypt.
    pub op: TransitOp,
    /// The Transit key.
    pub key: &'a str,
    /// Plaintexts (encrypt) or `vault:vN:…` values (decrypt), with their associated data.
    pub items: &'a [Item],
}

/// The `batch_input` entry that encrypts `it`.
fn encrypt_entry(it: &Item) -> Zeroizing<String> {
    entry(&[("plaintext", &Zeroizing::new(b64(&it.data)))], it)
}

/// The `batch_input` entry that decrypts `it` (a `vault:vN:…` value).
fn decrypt_entry(it: &Item) -> Zeroizing<String> {
    entry(&[("ciphertext", &Zeroizing::new(String::from_utf8_lossy(&it.data).into_owned()))], it)
}

/// The plaintext of a decrypt answer item.
fn plaintext_of(r: Result<BatchItem, ItemError>) -> Decrypted {
    r.and_then(|v| {
        let p = v.plaintext.unwrap_or_default();
        STANDARD.decode(p.as_bytes()).map(Zeroizing::new).map_err(|_| ItemError {
            kind: ItemErrorKind::Other,
            message: "OpenBao answered a plaintext that is not base64".into(),
        })
    })
}

/// The ciphertext of an encrypt or rewrap answer item.
fn ciphertext_of(v: BatchItem) -> Result<String, ItemError> {
    v.ciphertext
        .ok_or(ItemError { kind: ItemErrorKind::Other, message: "OpenBao answered without a ciphertext".into() })
}

/// The answer to one batch call of `n` items: per-item results, or a whole-request error.
fn parse_batch(
    status: u16,
    text: &str,
    n: usize,
    what: &str,
    key: &str,
) -> Result<Vec<Result<BatchItem, ItemError>>, Error> {
    let answer: Option<BatchAnswer> = serde_json::from_str(text).ok();
    let errors = answer.as_ref().map(|a| a.errors.join("; ")).unwrap_or_default().to_ascii_lowercase();
    let results = answer.and_then(|a| a.data).and_then(|d| d.batch_results);
    match (status, results) {
        (200 | 400, Some(results)) if results.len() == n => Ok(results
            .into_iter()
            .map(|r| if r.error.is_empty() { Ok(r) } else { Err(item_error(&r.error)) })
            .collect()),
        (200, Some(results)) => Err(Error::new(
            ErrorKind::Protocol,
            format!("OpenBao answered {} results for {n} items of {what} on key {key}", results.len()),
        )),
        (400, _) => {
            if errors.contains("key not found") {
                Err(Error::new(ErrorKind::KeyNotFound, format!("Transit key {key} does not exist")))
            } else if errors.contains("complexity") || errors.contains("too large") {
                Err(Error::new(ErrorKind::TooLarge, "OpenBao refused the batch as too large"))
            } else {
                Err(Error::new(ErrorKind::BadRequest, format!("OpenBao rejected {what} on key {key} (HTTP 400)")))
            }
        }
        (403, _) => {
            Err(Error::new(ErrorKind::PermissionDenied, format!("OpenBao denied {what} on key {key} (HTTP 403)")))
        }
        (404, _) => Err(Error::new(ErrorKind::KeyNotFound, format!("Transit key {key} does not exist"))),
        (413, _) => Err(Error::new(ErrorKind::TooLarge, "OpenBao refused the request body as too large")),
        (s, _) if (400..500).contains(&s) => {
            Err(Error::new(ErrorKind::BadRequest, format!("OpenBao rejected {what} on key {key} (HTTP {s})")))
        }
        (s, _) => Err(Error::new(ErrorKind::Protocol, format!("unexpected answer to {what} on key {key}: HTTP {s}"))),
    }
}

impl Client {
    fn transit_path(&self, what: &str, key: &str) -> String {
        format!("{}/{what}/{key}", self.cfg.mount)
    }

    /// One batch call. `entries` are the `batch_input` items, each already a JSON object text.
    fn batch_call(
        &mut self,
        what: &str,
        key: &str,
        entries: &[Zeroizing<String>],
    ) -> Result<Vec<Result<BatchItem, ItemError>>, Error> {
        let path = self.transit_path(what, key);
        let (status, text) = self.request("POST", &path, Some(batch_body(entries)), On403::Reauthenticate)?;
        parse_batch(status, &text, entries.len(), what, key)
    }

    /// `what` (encrypt, decrypt, rewrap) of all `items` with `key` ([`Client::batch_runs`]).
    fn batch_run(
        &mut self,
        what: &str,
        key: &str,
        items: &[Item],
        entry_of: impl Fn(&Item) -> Zeroizing<String>,
    ) -> Result<Vec<Result<BatchItem, ItemError>>, Error> {
        self.batch_runs(&[Run { what, key, items, entry_of: &entry_of }]).pop().unwrap_or_else(|| Ok(Vec::new()))
    }

    /// Several batch operations at once: each split under the request limits
    /// ([`Client::chunks`]); when that makes several requests in all, up to
    /// [`TRANSIT_IN_FLIGHT`] of them (of any of the operations) are outstanding at once
    /// ([`Client::post_concurrently`]), and a request that pass could not settle goes through
    /// the normal path (failover, re-authentication, back-off). Per operation: answers in the
    /// items' order, and the first whole-request failure, in the items' order, fails it (its
    /// later requests are not sent), as one by one.
    fn batch_runs(&mut self, runs: &[Run<'_>]) -> Vec<Result<Vec<Result<BatchItem, ItemError>>, Error>> {
        let mut out: Vec<Result<Vec<_>, Error>> = runs.iter().map(|r| Ok(Vec::with_capacity(r.items.len()))).collect();
        let requests: Vec<(usize, std::ops::Range<usize>)> =
            runs.iter().enumerate().flat_map(|(k, r)| Self::chunks(r.items).into_iter().map(move |c| (k, c))).collect();
        // A window of requests at a time: at most TRANSIT_IN_FLIGHT bodies exist at once.
        for window in requests.chunks(TRANSIT_IN_FLIGHT) {
            let live: Vec<&(usize, std::ops::Range<usize>)> = window.iter().filter(|(k, _)| out[*k].is_ok()).collect();
            let entries: Vec<Vec<Zeroizing<String>>> = live
                .iter()
                .map(|(k, c)| runs[*k].items[c.clone()].iter().map(|it| (runs[*k].entry_of)(it)).collect())
                .collect();
            let answers = if entries.len() > 1 {
                let bodies: Vec<(String, Zeroizing<String>)> = live
                    .iter()
                    .zip(&entries)
                    .map(|((k, _), e)| (self.transit_path(runs[*k].what, runs[*k].key), batch_body(e)))
                    .collect();
                self.post_concurrently(&bodies, TRANSIT_IN_FLIGHT)
            } else {
                vec![None]
            };
            for (((k, _), e), answer) in live.iter().zip(&entries).zip(answers) {
                let Run { what, key, .. } = runs[*k];
                if out[*k].is_err() {
                    continue; // an earlier request of the operation failed in this window
                }
                let results = match answer {
                    Some((status, text)) => parse_batch(status, &text, e.len(), what, key),
                    None => self.batch_call(what, key, e),
                };
                match results {
                    Ok(r) => {
                        if let Ok(v) = &mut out[*k] {
                            v.extend(r);
                        }
                    }
                    Err(err) => out[*k] = Err(err),
                }
            }
        }
        out
    }

    /// Encrypts and decrypts several sets of items at once (a worker round that serves several
    /// backends' requests, for several keys or both operations): their requests share the
    /// [`TRANSIT_IN_FLIGHT`] window. Per set: the answers
    /// ([`Client::encrypt`]'s ciphertext text, or [`Client::decrypt`]'s plaintext), in order,
    /// or the set's whole-request error.
    pub fn transit_batches(&mut self, sets: &[TransitBatch<'_>]) -> Vec<Result<Vec<Decrypted>, Error>> {
        let runs: Vec<Run<'_>> = sets
            .iter()
            .map(|s| match s.op {
                TransitOp::Encrypt => Run { what: "encrypt", key: s.key, items: s.items, entry_of: &encrypt_entry },
                TransitOp::Decrypt => Run { what: "decrypt", key: s.key, items: s.items, entry_of: &decrypt_entry },
            })
            .collect();
        let results = self.batch_runs(&runs);
        results
            .into_iter()
            .zip(sets)
            .map(|(r, s)| {
                r.map(|items| match s.op {
                    TransitOp::Encrypt => items
                        .into_iter()
                        .map(|r| r.and_then(ciphertext_of).map(|c| Zeroizing::new(c.into_bytes())))
                        .collect(),
                    TransitOp::Decrypt => items.into_iter().map(plaintext_of).collect(),
                })
            })
            .collect()
    }

    /// Splits items into chunks under the JSON-string and body limits.
    fn chunks(items: &[Item]) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let (mut start, mut strings, mut bytes) = (0, 2, 32);
        for (i, it) in items.iter().enumerate() {
            let s = 2 + if it.associated_data.is_some() { 2 } else { 0 };
            let b = 40 + it.data.len() * 4 / 3 + it.associated_data.as_ref().map_or(0, |a| a.len() * 4 / 3 + 24);
            if i > start && (strings + s > MAX_JSON_STRINGS || bytes + b > MAX_BODY) {
                out.push(start..i);
                start = i;
                strings = 2;
                bytes = 32;
            }
            strings += s;
            bytes += b;
        }
        if start < items.len() {
            out.push(start..items.len());
        }
        out
    }

    /// Encrypts items with `key`; answers `vault:vN:…` per item, in order.
    pub fn encrypt(&mut self, key: &str, items: &[Item]) -> Result<Vec<Result<String, ItemError>>, Error> {
        let results = self.batch_run("encrypt", key, items, encrypt_entry)?;
        Ok(results.into_iter().map(|r| r.and_then(ciphertext_of)).collect())
    }

    /// Decrypts `vault:vN:…` items with `key`; answers the plaintext per item, in order.
    pub fn decrypt(&mut self, key: &str, items: &[Item]) -> Result<Vec<Decrypted>, Error> {
        let results = self.batch_run("decrypt", key, items, decrypt_entry)?;
        Ok(results.into_iter().map(plaintext_of).collect())
    }

    /// Generates a 256-bit data key: answers (plaintext key bytes, wrapped `vault:vN:…`). With
    /// `associated_data`, the wrapped key decrypts only with the same associated data.
    pub fn datakey(
        &mut self,
        key: &str,
        associated_data: Option<&[u8]>,
    ) -> Result<(Zeroizing<Vec<u8>>, String), Error> {
        let path = self.transit_path("datakey/plaintext", key);
        let mut body = String::from("{\"bits\":256");
        if let Some(a) = associated_data {
            body.push_str(",\"associated_data\":");
            push_json_str(&mut body, &b64(a));
        }
        body.push('}');
        let (status, text) = self.request("POST", &path, Some(Zeroizing::new(body)), On403::Reauthenticate)?;
        match status {
            200 => {
                let d = serde_json::from_str::<DataKeyAnswer>(&text)
                    .ok()
                    .and_then(|a| a.data)
                    .ok_or_else(|| Error::new(ErrorKind::Protocol, "datakey answered without a key"))?;
                let ct = d.ciphertext.as_str();
                let key_bytes = STANDARD
                    .decode(d.plaintext.as_bytes())
                    .map(Zeroizing::new)
                    .map_err(|_| Error::new(ErrorKind::Protocol, "datakey answered a plaintext that is not base64"))?;
                if key_bytes.len() != 32 || !ct.starts_with("vault:v") {
                    return Err(Error::new(ErrorKind::Protocol, "datakey answered an unexpected key"));
                }
                Ok((key_bytes, ct.to_owned()))
            }
            403 => {
                Err(Error::new(ErrorKind::PermissionDenied, format!("OpenBao denied datakey on key {key} (HTTP 403)")))
            }
            400 | 404 => Err(Error::new(ErrorKind::KeyNotFound, format!("Transit key {key} does not exist"))),
            s => Err(Error::new(ErrorKind::Protocol, format!("unexpected answer to datakey on key {key}: HTTP {s}"))),
        }
    }

    /// Rewraps `vault:vN:…` items (no associated data) to the key's latest version.
    pub fn rewrap(&mut self, key: &str, items: &[Item]) -> Result<Vec<Result<String, ItemError>>, Error> {
        let results = self.batch_run("rewrap", key, items, |it| {
            let ct = Zeroizing::new(String::from_utf8_lossy(&it.data).into_owned());
            entry(&[("ciphertext", &ct)], &Item { data: Zeroizing::new(Vec::new()), associated_data: None })
        })?;
        Ok(results.into_iter().map(|r| r.and_then(ciphertext_of)).collect())
    }

    /// Reads a key's properties.
    pub fn key_info(&mut self, key: &str) -> Result<KeyInfo, Error> {
        let path = self.transit_path("keys", key);
        let (status, text) = self.request("GET", &path, None, On403::Reauthenticate)?;
        let v = small_json(&text)?;
        match status {
            200 => {
                let d =
                    v.get("data").ok_or_else(|| Error::new(ErrorKind::Protocol, "key read answered without data"))?;
                let num = |k: &str| d.get(k).and_then(Value::as_u64).unwrap_or(0) as u32;
                Ok(KeyInfo {
                    key_type: d.get("type").and_then(Value::as_str).unwrap_or("unknown").to_owned(),
                    derived: d.get("derived").and_then(Value::as_bool).unwrap_or(false),
                    latest_version: num("latest_version"),
                    min_decryption_version: num("min_decryption_version"),
                    supports_encryption: d.get("supports_encryption").and_then(Value::as_bool).unwrap_or(false),
                })
            }
            404 => Err(Error::new(ErrorKind::KeyNotFound, format!("Transit key {key} does not exist"))),
            403 => Err(Error::new(
                ErrorKind::PermissionDenied,
                format!("OpenBao denied reading Transit key {key} (HTTP 403)"),
            )),
            s => Err(Error::new(ErrorKind::Protocol, format!("unexpected answer reading Transit key {key}: HTTP {s}"))),
        }
    }

    /// Creates an AES-256-GCM key (a per-row key used for the first time, with
    /// `credcrypt.auto_create_keys`). Creating a key that exists changes nothing (OpenBao answers
    /// 200 or 204 either way), so concurrent first uses create it once; the key is read back
    /// and must be an encryption key.
    pub fn create_key(&mut self, key: &str) -> Result<KeyInfo, Error> {
        let path = self.transit_path("keys", key);
        let body = Zeroizing::new(r#"{"type":"aes256-gcm96"}"#.to_owned());
        let (status, _) = self.request("POST", &path, Some(body), On403::Reauthenticate)?;
        match status {
            200 | 204 => {}
            403 => {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    format!("OpenBao denied creating Transit key {key} (HTTP 403): the policy must allow create on it"),
                ))
            }
            s => {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!("unexpected answer creating Transit key {key}: HTTP {s}"),
                ))
            }
        }
        self.key_info(key)
    }

    /// Destroys a key and every version of it (crypto-shredding): allows its deletion, then
    /// deletes it. A key that does not exist is already destroyed (Ok).
    pub fn delete_key(&mut self, key: &str) -> Result<(), Error> {
        let path = self.transit_path("keys", key);
        let config = format!("{path}/config");
        let body = Zeroizing::new(r#"{"deletion_allowed":true}"#.to_owned());
        let (status, _) = self.request("POST", &config, Some(body), On403::Reauthenticate)?;
        match status {
            200 | 204 => {}
            // A missing key: OpenBao answers 400 (or 404) to its config update.
            400 | 404 => {
                if matches!(self.key_info(key), Err(ref e) if e.kind == ErrorKind::KeyNotFound) {
                    return Ok(());
                }
                return Err(Error::new(ErrorKind::Protocol, format!("OpenBao refused to allow deleting Transit key {key} (HTTP {status})")));
            }
            403 => {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    format!("OpenBao denied configuring Transit key {key} for deletion (HTTP 403): the policy must allow update on transit/keys/{key}/config"),
                ))
            }
            s => {
                return Err(Error::new(ErrorKind::Protocol, format!("unexpected answer configuring Transit key {key}: HTTP {s}")))
            }
        }
        let (status, _) = self.request("DELETE", &path, None, On403::Reauthenticate)?;
        match status {
            200 | 204 | 404 => Ok(()),
            403 => Err(Error::new(
                ErrorKind::PermissionDenied,
                format!("OpenBao denied deleting Transit key {key} (HTTP 403): the policy must allow delete on transit/keys/{key}"),
            )),
            s => Err(Error::new(ErrorKind::Protocol, format!("unexpected answer deleting Transit key {key}: HTTP {s}"))),
        }
    }

    /// Rotates a key; returns the new latest version.
    pub fn rotate(&mut self, key: &str) -> Result<u32, Error> {
        let path = format!("{}/rotate", self.transit_path("keys", key));
        let (status, _) = self.request("POST", &path, Some(Zeroizing::new("{}".into())), On403::Reauthenticate)?;
        match status {
            200 | 204 => Ok(self.key_info(key)?.latest_version),
            403 => Err(Error::new(
                ErrorKind::PermissionDenied,
                format!("OpenBao denied rotating Transit key {key} (HTTP 403)"),
            )),
            400 | 404 => Err(Error::new(ErrorKind::KeyNotFound, format!("Transit key {key} does not exist"))),
            s => {
                Err(Error::new(ErrorKind::Protocol, format!("unexpected answer rotating Transit key {key}: HTTP {s}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: usize, ctx: bool) -> Item {
        Item { data: Zeroizing::new(vec![b'x'; n]), associated_data: ctx.then(|| b"c".to_vec()) }
    }

    #[test]
    fn chunks_respect_string_limit() {
        let items: Vec<Item> = (0..1200).map(|_| item(10, false)).collect();
        let c = Client::chunks(&items);
        assert!(c.iter().all(|r| 2 + r.len() * 2 <= MAX_JSON_STRINGS));
        assert_eq!(c.iter().map(|r| r.len()).sum::<usize>(), 1200);
        let items: Vec<Item> = (0..500).map(|_| item(10, true)).collect();
        assert!(Client::chunks(&items).iter().all(|r| 2 + r.len() * 4 <= MAX_JSON_STRINGS));
        assert!(Client::chunks(&[]).is_empty());
    }

    #[test]
    fn batch_entries_are_valid_json_and_answers_parse_into_wiping_strings() {
        let it = Item { data: Zeroizing::new(b"x".to_vec()), associated_data: Some(b"ctx\"\\".to_vec()) };
        let e = entry(&[("ciphertext", &Zeroizing::new("vault:v1:a\"b\\c\n".into()))], &it);
        let v: Value = serde_json::from_str(&e).expect("valid JSON");
        assert_eq!(v["ciphertext"], "vault:v1:a\"b\\c\n");
        assert_eq!(v["associated_data"], b64(b"ctx\"\\"));
        let a: BatchAnswer = serde_json::from_str(
            r#"{"data":{"batch_results":[{"plaintext":"c2VjcmV0"},{"error":"cipher: message authentication failed"}]},"warnings":null}"#,
        )
        .expect("parses");
        let r = a.data.and_then(|d| d.batch_results).expect("results");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].plaintext.as_deref().map(String::as_str), Some("c2VjcmV0"));
        assert!(r[1].error.contains("authentication"));
    }
}
