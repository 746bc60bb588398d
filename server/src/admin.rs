//! Operator actions: accounts, one-time enrolment codes, assignments. Used by the
//! `sealpost-relay admin` subcommands against the relay's database (safe while the relay
//! runs: SQLite in WAL mode takes concurrent writers from several processes).

use rand::Rng;
use sealpost_protocol::identity::AccountId;
use sealpost_protocol::wire::Role;

use crate::relay::{enrollment_code_hash, unix_ms};
use crate::store::{AccountRecord, AccountStore, CodeRecord, DeviceRecord, Store, StoreError};

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

/// Disable (`true`) or re-enable an account: a disabled account's devices cannot
/// authenticate, and a running relay closes their connections within
/// [`crate::DISABLED_CHECK_INTERVAL`]. Returns whether that changed it.
pub async fn set_disabled<S: AccountStore>(
    store: &S,
    account: &AccountId,
    disabled: bool,
) -> Result<bool, AdminError> {
    Ok(store.set_account_disabled(account, disabled).await?)
}

/// Enrolment codes (of `account`, or all): ids, expiry and whether used; never the code.
pub async fn codes<S: AccountStore>(
    store: &S,
    account: Option<&AccountId>,
) -> Result<Vec<CodeRecord>, AdminError> {
    Ok(store.enrollment_codes(account).await?)
}

/// Revoke `account`'s unused codes whose id starts with `id` (all its unused codes when
/// `None`). An id must be at least 4 hex digits, so that a typo does not revoke a
/// different code by accident. Returns how many were revoked.
pub async fn revoke_codes<S: AccountStore>(
    store: &S,
    account: &AccountId,
    id: Option<&str>,
) -> Result<u64, AdminError> {
    if let Some(id) = id {
        if id.len() < 4 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AdminError::Invalid(format!(
                "a code id is 4 to {} hex digits, as `admin codes` lists it",
                crate::store::CODE_ID_HEX
            )));
        }
    }
    if store.account(account).await?.is_none() {
        return Err(AdminError::Store(StoreError::NotFound("account")));
    }
    Ok(store.revoke_enrollment_codes(account, id).await?)
}

/// Every assignment (client, staff), or those of `account`, ordered.
pub async fn assignments<S: AccountStore>(
    store: &S,
    account: Option<&AccountId>,
) -> Result<Vec<(AccountId, AccountId)>, AdminError> {
    let mut out = Vec::new();
    let accounts = match account {
        Some(a) => vec![store
            .account(a)
            .await?
            .ok_or(StoreError::NotFound("account"))?],
        None => store.list_accounts().await?,
    };
    for a in accounts {
        for other in store.assignments_of(&a.id).await? {
            let pair = if a.role == Role::Client {
                (a.id.clone(), other)
            } else {
                (other, a.id.clone())
            };
            if account.is_some() || a.role == Role::Client {
                out.push(pair);
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// A summary of what the relay holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// Accounts by role: client, advisor, staff.
    pub clients: u64,
    /// Advisor accounts.
    pub advisors: u64,
    /// Staff accounts.
    pub staff: u64,
    /// Accounts frozen by their device log.
    pub frozen: u64,
    /// Accounts disabled by the operator.
    pub disabled: u64,
    /// Devices that can authenticate.
    pub active_devices: u64,
    /// Devices revoked by their account's log.
    pub revoked_devices: u64,
    /// Enrolment codes not used and not expired.
    pub open_codes: u64,
    /// Client-staff assignments.
    pub assignments: u64,
    /// Envelopes waiting for their recipient.
    pub pending_envelopes: u64,
    /// Their body bytes.
    pub pending_bytes: u64,
    /// The newest roster version stored (0: none).
    pub roster_version: u64,
}

/// Count what the relay holds (reads every account: for operators, not for a hot path).
pub async fn status<S: Store>(store: &S, now_ms: u64) -> Result<Status, AdminError> {
    let mut st = Status::default();
    for a in store.list_accounts().await? {
        match a.role {
            Role::Client => st.clients += 1,
            Role::Advisor => st.advisors += 1,
            Role::Staff => st.staff += 1,
        }
        st.frozen += u64::from(a.frozen);
        st.disabled += u64::from(a.disabled);
        for d in store.devices_of(&a.id).await? {
            if d.revoked {
                st.revoked_devices += 1;
            } else {
                st.active_devices += 1;
            }
        }
        if a.role == Role::Client {
            st.assignments += store.assignments_of(&a.id).await?.len() as u64;
        }
    }
    st.open_codes = store
        .enrollment_codes(None)
        .await?
        .iter()
        .filter(|c| !c.used && c.expires_ms > now_ms)
        .count() as u64;
    let q = store.queue_stats().await?;
    st.pending_envelopes = q.count;
    st.pending_bytes = q.bytes;
    let mut after = 0;
    loop {
        let batch = store.rosters_after(after, 64).await?;
        let Some(last) = batch.last() else { break };
        after = last.roster.version();
        if batch.len() < 64 {
            break;
        }
    }
    st.roster_version = after;
    Ok(st)
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
