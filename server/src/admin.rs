//! Operator actions: accounts, one-time enrolment codes, assignments. Used by the
//! `sealpost-relay admin` subcommands against the relay's database (safe while the relay
//! runs: SQLite in WAL mode takes concurrent writers from several processes).

use rand::Rng;
use sealpost_protocol::identity::AccountId;
use sealpost_protocol::wire::Role;

use crate::relay::{enrollment_code_hash, unix_ms};
use crate::store::{AccountRecord, AccountStore, DeviceRecord, StoreError};

/// Alphabet of enrolment codes: Crockford base32 (no I, L, O, U), easy to read aloud.
pub const CODE_ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters in a code (20 x 5 bits = 100 bits of entropy).
pub const CODE_CHARS: usize = 20;
/// Default lifetime of an enrolment code.
pub const DEFAULT_CODE_TTL_SECS: u64 = 24 * 3600;
/// Longest lifetime an operator may give a code.
pub const MAX_CODE_TTL_SECS: u64 = 30 * 24 * 3600;

/// An admin action failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Storage refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request is not valid.
    #[error("{0}")]
    Invalid(String),
}

/// A freshly issued code: shown once, stored only as a hash.
pub struct IssuedCode {
    /// The code, e.g. `7K2QM-9XH4T-P3WZR-B8N6D`.
    pub code: String,
    /// The account it enrols a device into.
    pub account: AccountId,
    /// Expiry, ms since the Unix epoch.
    pub expires_ms: u64,
}

/// Generate a random code, grouped in fives.
pub fn generate_code<R: rand::RngCore + rand::CryptoRng>(rng: &mut R) -> String {
    let mut out = String::with_capacity(CODE_CHARS + CODE_CHARS / 5);
    for i in 0..CODE_CHARS {
        if i > 0 && i % 5 == 0 {
            out.push('-');
        }
        out.push(CODE_ALPHABET[rng.gen_range(0..CODE_ALPHABET.len())] as char);
    }
    out
}

/// Create an account.
pub async fn create_account<S: AccountStore>(
    store: &S,
    id: &AccountId,
    role: Role,
) -> Result<(), AdminError> {
    Ok(store.create_account(id, role, unix_ms()).await?)
}

/// Issue a one-time enrolment code for an existing account.
pub async fn issue_code<S: AccountStore>(
    store: &S,
    account: &AccountId,
    ttl_secs: u64,
) -> Result<IssuedCode, AdminError> {
    if ttl_secs == 0 || ttl_secs > MAX_CODE_TTL_SECS {
        return Err(AdminError::Invalid(format!(
            "code lifetime must be 1 s to {MAX_CODE_TTL_SECS} s"
        )));
    }
    if store.account(account).await?.is_none() {
        return Err(AdminError::Store(StoreError::NotFound("account")));
    }
    let code = generate_code(&mut rand::rngs::OsRng);
    let expires_ms = unix_ms().saturating_add(ttl_secs * 1000);
    store
        .add_enrollment_code(account, enrollment_code_hash(&code), expires_ms)
        .await?;
    Ok(IssuedCode {
        code,
        account: account.clone(),
        expires_ms,
    })
}

/// Assign a client to an advisor or staff account.
pub async fn assign<S: AccountStore>(
    store: &S,
    client: &AccountId,
    staff: &AccountId,
) -> Result<(), AdminError> {
    let c = store
        .account(client)
        .await?
        .ok_or(StoreError::NotFound("client account"))?;
    let s = store
        .account(staff)
        .await?
        .ok_or(StoreError::NotFound("staff account"))?;
    if c.role != Role::Client {
        return Err(AdminError::Invalid(format!(
            "{client} is not a client account"
        )));
    }
    if s.role == Role::Client {
        return Err(AdminError::Invalid(format!(
            "{staff} is a client account; assign clients to advisors or staff"
        )));
    }
    Ok(store.assign(client, staff).await?)
}

/// Remove an assignment; true if it existed.
pub async fn unassign<S: AccountStore>(
    store: &S,
    client: &AccountId,
    staff: &AccountId,
) -> Result<bool, AdminError> {
    Ok(store.unassign(client, staff).await?)
}

/// All accounts.
pub async fn accounts<S: AccountStore>(store: &S) -> Result<Vec<AccountRecord>, AdminError> {
    Ok(store.list_accounts().await?)
}

/// The devices of an account.
pub async fn devices<S: AccountStore>(
    store: &S,
    account: &AccountId,
) -> Result<Vec<DeviceRecord>, AdminError> {
    Ok(store.devices_of(account).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_the_documented_shape() {
        let mut rng = rand::rngs::OsRng;
        let a = generate_code(&mut rng);
        let b = generate_code(&mut rng);
        assert_ne!(a, b);
        assert_eq!(a.len(), 23);
        assert!(a
            .split('-')
            .all(|g| g.len() == 5 && g.bytes().all(|c| CODE_ALPHABET.contains(&c))));
    }

    #[test]
    fn typed_codes_are_read_as_crockford_decoders_read_them() {
        use crate::relay::{enrollment_code_hash, normalize_enrollment_code};
        let issued = "7K2QM-9XH4T-P3WZR-B8N6D";
        let h = enrollment_code_hash(issued);
        for typed in [
            "7K2QM9XH4TP3WZRB8N6D",
            "7k2qm9xh4tp3wzrb8n6d",
            " 7K2QM-9XH4T P3WZR-B8N6D ",
            "7K-2QM9XH4TP3WZR-B8N6D",
        ] {
            assert_eq!(enrollment_code_hash(typed), h, "{typed}");
        }
        // I and L read as 1, O as 0.
        assert_eq!(
            normalize_enrollment_code("1OA2B-3C4D5-E6F7G-H8J9K"),
            normalize_enrollment_code("I0A2B3C4D5E6F7GH8J9K")
        );
        assert_eq!(
            normalize_enrollment_code("lOA2B3C4D5E6F7GH8J9K"),
            "10A2B-3C4D5-E6F7G-H8J9K"
        );
        // Wrong length or a character outside the alphabet: hashed as typed, matches nothing.
        assert_ne!(enrollment_code_hash("7K2QM9XH4TP3WZRB8N6"), h);
        assert_ne!(enrollment_code_hash("7K2QM9XH4TP3WZRB8N6U"), h);
    }
}
