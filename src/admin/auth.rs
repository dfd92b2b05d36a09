//! Who may change things: the operators' bearer tokens, each with a label
//! that the event log records as `who`, and the constant-time check of a
//! presented token against all of them.
//!
//! The token variable holds either one token (label `operator`) or
//! comma-separated `label=token` pairs (`alice=s3cret,bob=t0ken`), so a team
//! can tell from the event log who drained a region and revoke one person's
//! token without re-issuing everyone's.

use std::fmt;

/// The label of a token given on its own, without `label=`.
pub const DEFAULT_LABEL: &str = "operator";

/// Why the token variable's value cannot be used. Never contains a token.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// An item of a comma-separated list is not `label=token`.
    #[error(
        "item {index} of the list is not label=token (labels use letters, digits, '-', '_', '.')"
    )]
    NotAPair {
        /// 1-based position in the list.
        index: usize,
    },
    /// Two items share a label: the event log could not tell them apart.
    #[error("label {0:?} is given twice")]
    DuplicateLabel(String),
    /// Two labels share a token: a request could not be attributed.
    #[error("labels {0:?} and {1:?} have the same token")]
    DuplicateToken(String, String),
}

/// The configured operator tokens. Empty means "no token configured":
/// every mutation is refused.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    entries: Vec<(String, Vec<u8>)>,
}

impl fmt::Debug for Tokens {
    // Labels only: a token must never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("labels", &self.labels().collect::<Vec<_>>())
            .finish()
    }
}

impl Tokens {
    /// No token: mutations are refused.
    pub fn none() -> Tokens {
        Tokens::default()
    }

    /// One token with the label [`DEFAULT_LABEL`].
    pub fn single(token: impl Into<String>) -> Tokens {
        Tokens::labelled([(DEFAULT_LABEL, token)])
    }

    /// Tokens with explicit labels; empty tokens are skipped (an empty
    /// token would let an empty `Authorization: Bearer ` through).
    pub fn labelled<L, T>(pairs: impl IntoIterator<Item = (L, T)>) -> Tokens
    where
        L: Into<String>,
        T: Into<String>,
    {
        let entries = pairs
            .into_iter()
            .map(|(l, t)| (l.into(), t.into().into_bytes()))
            .filter(|(_, t)| !t.is_empty())
            .collect();
        Tokens { entries }
    }

    /// Parse the token variable's value: blank is no token; a value with a
    /// comma, or whose every item reads `label=token`, is a list of pairs;
    /// anything else is one token labelled `operator`.
    ///
    /// A single token may contain `=` as base64 padding (`abc==`): an item
    /// whose token part would start with `=` is not read as a pair. To use
    /// a token with `=` in the middle, give it a label: `operator=ab=cd`.
    pub fn parse(value: &str) -> Result<Tokens, TokenError> {
        let value = value.trim();
        if value.is_empty() {
            return Ok(Tokens::none());
        }
        let items: Vec<&str> = value
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .collect();
        let pairs: Vec<Option<(&str, &str)>> = items.iter().map(|i| as_pair(i)).collect();
        let listed = value.contains(',') || pairs.iter().all(Option::is_some);
        if !listed {
            return Ok(Tokens::single(value));
        }
        let mut entries: Vec<(String, Vec<u8>)> = Vec::with_capacity(items.len());
        for (index, pair) in pairs.into_iter().enumerate() {
            let (label, token) = pair.ok_or(TokenError::NotAPair { index: index + 1 })?;
            if entries.iter().any(|(l, _)| l == label) {
                return Err(TokenError::DuplicateLabel(label.to_owned()));
            }
            if let Some((other, _)) = entries.iter().find(|(_, t)| t == token.as_bytes()) {
                return Err(TokenError::DuplicateToken(other.clone(), label.to_owned()));
            }
            entries.push((label.to_owned(), token.as_bytes().to_vec()));
        }
        Ok(Tokens { entries })
    }

    /// True when no token is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The labels, in configuration order.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(l, _)| l.as_str())
    }

    /// The label of the token equal to `presented`, if any. Every
    /// configured token is compared, in constant time each, so the answer
    /// time says nothing about which token came close.
    pub fn check(&self, presented: &[u8]) -> Option<&str> {
        let mut found = None;
        for (label, token) in &self.entries {
            if ct_eq(presented, token) && found.is_none() {
                found = Some(label.as_str());
            }
        }
        found
    }
}

/// `label=token` with a label of name characters and a token that does not
/// start with `=` (which would be base64 padding of a single token).
fn as_pair(item: &str) -> Option<(&str, &str)> {
    let (label, token) = item.split_once('=')?;
    let label = label.trim();
    let token = token.trim();
    let label_ok = !label.is_empty()
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    (label_ok && !token.is_empty() && !token.starts_with('=')).then_some((label, token))
}

/// Equality whose running time depends only on the length of `presented`
/// (which the caller chose), never on where the first difference is or on
/// the configured token's length.
pub fn ct_eq(presented: &[u8], configured: &[u8]) -> bool {
    if configured.is_empty() {
        return presented.is_empty();
    }
    // Fold the length difference into the same accumulator instead of
    // returning early on it.
    let mut diff = u8::from(presented.len() != configured.len());
    for (i, &b) in presented.iter().enumerate() {
        diff |= b ^ configured[i % configured.len()];
    }
    std::hint::black_box(diff) == 0
}

/// A fresh random token (32 hex digits from the kernel's CSPRNG), for the
/// demo, which has no configured token but should still let its user drain.
pub fn random_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_matches_only_equal_bytes() {
        assert!(ct_eq(b"s3cret", b"s3cret"));
        assert!(!ct_eq(b"s3cre", b"s3cret"));
        assert!(!ct_eq(b"s3cretX", b"s3cret"));
        // A repetition of the token must not pass the modulo indexing.
        assert!(!ct_eq(b"abab", b"ab"));
        assert!(!ct_eq(b"", b"ab"));
        assert!(!ct_eq(b"s3creT", b"s3cret"));
    }

    #[test]
    fn one_token_is_labelled_operator() {
        let t = Tokens::parse("  s3cret \n").unwrap();
        assert_eq!(t.check(b"s3cret"), Some("operator"));
        assert_eq!(t.check(b"s3cre"), None);
    }

    #[test]
    fn base64_padding_is_a_single_token() {
        let t = Tokens::parse("c2VjcmV0==").unwrap();
        assert_eq!(t.check(b"c2VjcmV0=="), Some("operator"));
        let t = Tokens::parse("c2VjcmV0=").unwrap();
        assert_eq!(t.check(b"c2VjcmV0="), Some("operator"));
    }

    #[test]
    fn pairs_give_each_operator_a_label() {
        let t = Tokens::parse("alice=s3cret, bob=t0ken").unwrap();
        assert_eq!(t.check(b"s3cret"), Some("alice"));
        assert_eq!(t.check(b"t0ken"), Some("bob"));
        assert_eq!(t.check(b"alice=s3cret"), None);
        assert_eq!(t.labels().collect::<Vec<_>>(), ["alice", "bob"]);
        let t = Tokens::parse("ci=ab=cd").unwrap();
        assert_eq!(t.check(b"ab=cd"), Some("ci"));
    }

    #[test]
    fn bad_lists_are_refused_without_showing_tokens() {
        assert_eq!(
            Tokens::parse("alice=s3cret,t0ken"),
            Err(TokenError::NotAPair { index: 2 })
        );
        assert_eq!(
            Tokens::parse("alice=a,alice=b"),
            Err(TokenError::DuplicateLabel("alice".into()))
        );
        let e = Tokens::parse("alice=same,bob=same").unwrap_err();
        assert_eq!(e, TokenError::DuplicateToken("alice".into(), "bob".into()));
        assert!(!e.to_string().contains("same\""), "{e}");
    }

    #[test]
    fn blank_is_no_token_and_matches_nothing() {
        let t = Tokens::parse("   ").unwrap();
        assert!(t.is_empty());
        assert_eq!(t.check(b""), None);
        assert!(Tokens::single("").is_empty());
    }

    #[test]
    fn debug_shows_labels_not_tokens() {
        let t = Tokens::parse("alice=s3cret").unwrap();
        let shown = format!("{t:?}");
        assert!(
            shown.contains("alice") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn random_tokens_differ() {
        let a = random_token().unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, random_token().unwrap());
    }
}
