//! Basic authentication against the bcrypt hashes of `basic_auth_users`.
//!
//! bcrypt is slow on purpose (tens of milliseconds at cost 10), so: results are cached per
//! (user, password) for the life of the configuration (a scraper sends the same
//! credentials every time: one bcrypt per configuration, then none); bcrypt runs on a
//! blocking thread, one at a time, so that guessing clients cost at most one core and never
//! hold up a scraper whose credentials are cached; an unknown user is checked against a
//! decoy hash of the same cost, so that timing does not tell which users exist.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine as _;
use tokio::sync::Semaphore;

/// Cached results kept at most; past that the cache starts afresh.
const CACHE_ENTRIES: usize = 256;

/// The users of one configuration.
pub struct Users {
    hashes: BTreeMap<String, String>,
    decoy: String,
    cache: Mutex<HashMap<(String, String), bool>>,
    bcrypt: Semaphore,
}

impl Users {
    /// Users from checked `basic_auth_users` (at least one).
    #[must_use]
    pub fn new(hashes: BTreeMap<String, String>) -> Arc<Self> {
        let cost = hashes
            .values()
            .find_map(|h| h.parse::<bcrypt::HashParts>().ok())
            .map_or(bcrypt::DEFAULT_COST, |p| p.get_cost());
        // A hash of nothing in particular, of the users' cost.
        let decoy = bcrypt::hash("socklat decoy password", cost).unwrap_or_default();
        Arc::new(Self {
            hashes,
            decoy,
            cache: Mutex::new(HashMap::new()),
            bcrypt: Semaphore::new(1),
        })
    }

    /// Whether an `Authorization` header value carries the credentials of a user.
    pub async fn check(self: &Arc<Self>, authorization: Option<&[u8]>) -> bool {
        let Some((user, password)) = authorization.and_then(basic_credentials) else {
            return false;
        };
        let key = (user, password);
        if let Some(&ok) = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return ok;
        }
        let Ok(_permit) = self.bcrypt.acquire().await else {
            return false;
        };
        let me = Arc::clone(self);
        let (user, password) = key.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let (hash, known) = match me.hashes.get(&user) {
                Some(h) => (h.as_str(), true),
                None => (me.decoy.as_str(), false),
            };
            bcrypt::verify(password.as_bytes(), hash).unwrap_or(false) && known
        })
        .await
        .unwrap_or(false);
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, ok);
        ok
    }
}

/// `(user, password)` of a `Basic` authorization header value.
fn basic_credentials(value: &[u8]) -> Option<(String, String)> {
    let value = std::str::from_utf8(value).ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> Vec<u8> {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {b}").into_bytes()
    }

    #[tokio::test]
    async fn users_and_passwords() {
        let mut hashes = BTreeMap::new();
        hashes.insert("prom".to_string(), bcrypt::hash("secret", 4).unwrap());
        let users = Users::new(hashes);
        assert!(users.check(Some(&header("prom", "secret"))).await);
        // Cached, and still right.
        assert!(users.check(Some(&header("prom", "secret"))).await);
        assert!(!users.check(Some(&header("prom", "wrong"))).await);
        assert!(!users.check(Some(&header("nobody", "secret"))).await);
        assert!(!users.check(None).await);
        assert!(!users.check(Some(b"Bearer abc")).await);
        assert!(!users.check(Some(b"Basic !!!")).await);
        assert!(!users.check(Some(&[0xff, 0xfe])).await);
        // A password may hold a colon.
        let mut hashes = BTreeMap::new();
        hashes.insert("u".to_string(), bcrypt::hash("a:b", 4).unwrap());
        assert!(Users::new(hashes).check(Some(&header("u", "a:b"))).await);
    }
}
