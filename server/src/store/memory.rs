//! In-memory store: the reference implementation of the storage contract.
//!
//! Everything lives behind one `std::sync::Mutex` around plain maps, so every method is
//! trivially atomic. It has exactly the semantics of [`super::sqlite::SqliteStore`]
//! (checked by the shared conformance tests) and loses everything when dropped: use it
//! for tests and for a relay that needs no durability.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use sealpost_protocol::envelope::{Envelope, MessageId};
use sealpost_protocol::identity::{AccountId, DeviceId, PublicIdentity};
use sealpost_protocol::prekeys::{KemPreKey, OneTimePreKey, PreKeyBundle, SignedPreKey};
use sealpost_protocol::tlog::LogLeaf;
use sealpost_protocol::trust::{ClientAttestation, LogEntry, SignedRoster};
use sealpost_protocol::wire::Role;

use super::tlog::{check_room, encode_leaf, TlogStore, MAX_LEAVES_PER_READ};
use super::{
    enrollment_leaves, genesis_device, AccountRecord, AccountStore, CodeRecord, DeviceRecord,
    Enqueued, LogEffects, MailboxStore, OnStaged, Pending, PreKeyCounts, PreKeyStore, PreKeyUpload,
    QueueStats, Quota, StoreError, TrustStore, CODE_ID_HEX, MAX_DEVICES_PER_ACCOUNT,
    MAX_STORED_LOG_ENTRIES, MAX_STORED_ONE_TIME_PREKEYS, MAX_STORED_ROSTER_VERSIONS,
};

/// An enrolment code (only its hash is known).
struct Code {
    account: AccountId,
    expires_ms: u64,
    used: bool,
}

/// An enrolled device with its prekeys and mailbox.
struct Device {
    record: DeviceRecord,
    /// Enrolment order, to break ties between equal enrolment times.
    order: u64,
    prekeys: PreKeys,
    mailbox: Mailbox,
}

#[derive(Default)]
struct PreKeys {
    signed: Option<SignedPreKey>,
    one_time: BTreeMap<u32, OneTimePreKey>,
    kem_one_time: BTreeMap<u32, KemPreKey>,
    kem_last_resort: Option<KemPreKey>,
}

impl PreKeys {
    fn counts(&self) -> PreKeyCounts {
        PreKeyCounts {
            one_time: count_u32(self.one_time.len()),
            kem_one_time: count_u32(self.kem_one_time.len()),
        }
    }
}

fn count_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

struct Stored {
    envelope: Arc<Envelope>,
    expires_ms: u64,
}

/// What recognises a repeat: the message id and the sender's timestamp, as the SQLite
/// store keys them (a same-id envelope with another timestamp is a new envelope).
type RepeatKey = (MessageId, u64);

fn repeat_key(e: &Envelope) -> RepeatKey {
    (e.header.message_id, e.header.timestamp_ms)
}

struct Mailbox {
    next_seq: u64,
    bytes: u64,
    by_seq: BTreeMap<u64, Stored>,
    by_id: HashMap<RepeatKey, u64>,
    /// Acknowledged envelopes with their sequence number and expiry, so that a late
    /// retry of an already delivered envelope is still recognised as a duplicate. Swept
    /// by `expire`; like everything here it lives in memory (this store is for tests and
    /// for relays that need no durability).
    delivered: HashMap<RepeatKey, (u64, u64)>,
}

impl Default for Mailbox {
    fn default() -> Self {
        Self {
            next_seq: 1,
            bytes: 0,
            by_seq: BTreeMap::new(),
            by_id: HashMap::new(),
            delivered: HashMap::new(),
        }
    }
}

#[derive(Default)]
struct Inner {
    accounts: BTreeMap<AccountId, AccountRecord>,
    codes: HashMap<[u8; 32], Code>,
    devices: HashMap<DeviceId, Device>,
    next_order: u64,
    /// (client, staff) pairs.
    assignments: BTreeSet<(AccountId, AccountId)>,
    /// Roster versions 1, 2, ...
    rosters: Vec<SignedRoster>,
    /// Device logs by account, each entry with the time it was appended.
    logs: HashMap<AccountId, Vec<(LogEntry, u64)>>,
    /// Attestations of client accounts' first devices.
    attestations: HashMap<AccountId, ClientAttestation>,
    /// Transparency-log leaves, in order.
    leaves: Vec<Vec<u8>>,
    /// Signed checkpoints by tree size.
    checkpoints: BTreeMap<u64, String>,
}

impl Inner {
    /// The checks and writes of an enrolment by code (the caller holds the lock, so it
    /// is atomic with whatever else the caller does under it).
    fn redeem(
        &mut self,
        account: &AccountId,
        code_hash: [u8; 32],
        identity: &PublicIdentity,
        now_ms: u64,
    ) -> Result<DeviceRecord, StoreError> {
        let code_ok = matches!(
            self.codes.get(&code_hash),
            Some(c) if &c.account == account && !c.used && now_ms < c.expires_ms
        );
        if !code_ok {
            return Err(StoreError::EnrollmentRefused);
        }
        let id = identity.device_id();
        if self.devices.contains_key(&id) {
            return Err(StoreError::Conflict("device"));
        }
        let active = self
            .devices
            .values()
            .filter(|d| &d.record.account == account && !d.record.revoked)
            .count();
        if active >= MAX_DEVICES_PER_ACCOUNT {
            return Err(StoreError::QuotaExceeded {
                what: "devices per account",
                current: active as u64,
                max: MAX_DEVICES_PER_ACCOUNT as u64,
            });
        }
        if let Some(c) = self.codes.get_mut(&code_hash) {
            c.used = true;
        }
        Ok(self.insert_device(account, identity, now_ms))
    }

    fn insert_device(
        &mut self,
        account: &AccountId,
        identity: &PublicIdentity,
        enrolled_ms: u64,
    ) -> DeviceRecord {
        let id = identity.device_id();
        let record = DeviceRecord {
            id,
            account: account.clone(),
            identity: identity.clone(),
            enrolled_ms,
            revoked: false,
        };
        let order = self.next_order;
        self.next_order += 1;
        self.devices.insert(
            id,
            Device {
                record: record.clone(),
                order,
                prekeys: PreKeys::default(),
                mailbox: Mailbox::default(),
            },
        );
        record
    }
}

/// The in-memory reference store.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// For tests that play a compromised relay (a split view): cut `account`'s stored
    /// device log to its first `len` entries and return the rest, so that the relay
    /// serves the shorter log from then on (entries come with their append times).
    /// Nothing else (device registrations, freeze
    /// state) is changed.
    #[doc(hidden)]
    pub fn cut_device_log_for_tests(
        &self,
        account: &AccountId,
        len: usize,
    ) -> Vec<(LogEntry, u64)> {
        match self.lock() {
            Ok(mut g) => match g.logs.get_mut(account) {
                Some(l) if l.len() > len => l.split_off(len),
                _ => Vec::new(),
            },
            Err(_) => Vec::new(),
        }
    }

    /// For tests: put back entries returned by [`MemoryStore::cut_device_log_for_tests`].
    #[doc(hidden)]
    pub fn restore_device_log_for_tests(&self, account: &AccountId, entries: Vec<(LogEntry, u64)>) {
        if let Ok(mut g) = self.lock() {
            g.logs.entry(account.clone()).or_default().extend(entries);
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        self.inner
            .lock()
            .map_err(|_| StoreError::Backend("memory store lock poisoned".to_owned()))
    }
}

fn body_len(envelope: &Envelope) -> u64 {
    u64::try_from(envelope.body.len()).unwrap_or(u64::MAX)
}

impl AccountStore for MemoryStore {
    async fn create_account(
        &self,
        id: &AccountId,
        role: Role,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        if g.accounts.contains_key(id) {
            return Err(StoreError::Conflict("account"));
        }
        g.accounts.insert(
            id.clone(),
            AccountRecord {
                id: id.clone(),
                role,
                created_ms: now_ms,
                frozen: false,
                disabled: false,
            },
        );
        Ok(())
    }

    async fn account(&self, id: &AccountId) -> Result<Option<AccountRecord>, StoreError> {
        Ok(self.lock()?.accounts.get(id).cloned())
    }

    async fn list_accounts(&self) -> Result<Vec<AccountRecord>, StoreError> {
        Ok(self.lock()?.accounts.values().cloned().collect())
    }

    async fn add_enrollment_code(
        &self,
        account: &AccountId,
        code_hash: [u8; 32],
        expires_ms: u64,
    ) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        if !g.accounts.contains_key(account) {
            return Err(StoreError::NotFound("account"));
        }
        if g.codes.contains_key(&code_hash) {
            return Err(StoreError::Conflict("enrollment code"));
        }
        g.codes.insert(
            code_hash,
            Code {
                account: account.clone(),
                expires_ms,
                used: false,
            },
        );
        Ok(())
    }

    async fn redeem_enrollment(
        &self,
        account: &AccountId,
        code_hash: [u8; 32],
        identity: &PublicIdentity,
        now_ms: u64,
    ) -> Result<DeviceRecord, StoreError> {
        self.lock()?.redeem(account, code_hash, identity, now_ms)
    }

    async fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        Ok(self.lock()?.devices.get(id).map(|d| d.record.clone()))
    }

    async fn devices_of(&self, account: &AccountId) -> Result<Vec<DeviceRecord>, StoreError> {
        let g = self.lock()?;
        let mut devices: Vec<&Device> = g
            .devices
            .values()
            .filter(|d| &d.record.account == account)
            .collect();
        devices.sort_by_key(|d| (d.record.enrolled_ms, d.order));
        Ok(devices.into_iter().map(|d| d.record.clone()).collect())
    }

    async fn assign(&self, client: &AccountId, staff: &AccountId) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        if !g.accounts.contains_key(client) || !g.accounts.contains_key(staff) {
            return Err(StoreError::NotFound("account"));
        }
        g.assignments.insert((client.clone(), staff.clone()));
        Ok(())
    }

    async fn unassign(&self, client: &AccountId, staff: &AccountId) -> Result<bool, StoreError> {
        Ok(self
            .lock()?
            .assignments
            .remove(&(client.clone(), staff.clone())))
    }

    async fn is_assigned(&self, client: &AccountId, staff: &AccountId) -> Result<bool, StoreError> {
        Ok(self
            .lock()?
            .assignments
            .contains(&(client.clone(), staff.clone())))
    }

    async fn assignments_of(&self, account: &AccountId) -> Result<Vec<AccountId>, StoreError> {
        let g = self.lock()?;
        let mut out: BTreeSet<AccountId> = BTreeSet::new();
        for (client, staff) in &g.assignments {
            if client == account {
                out.insert(staff.clone());
            }
            if staff == account {
                out.insert(client.clone());
            }
        }
        Ok(out.into_iter().collect())
    }

    async fn clients_after(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<Vec<AccountId>, StoreError> {
        let g = self.lock()?;
        let from = match after {
            Some(a) => std::ops::Bound::Excluded(a.clone()),
            None => std::ops::Bound::Unbounded,
        };
        Ok(g.accounts
            .range((from, std::ops::Bound::Unbounded))
            .filter(|(_, r)| r.role == Role::Client)
            .take(limit)
            .map(|(id, _)| id.clone())
            .collect())
    }

    async fn set_account_disabled(
        &self,
        id: &AccountId,
        disabled: bool,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock()?;
        let a = g
            .accounts
            .get_mut(id)
            .ok_or(StoreError::NotFound("account"))?;
        let changed = a.disabled != disabled;
        a.disabled = disabled;
        Ok(changed)
    }

    async fn disabled_accounts(&self) -> Result<Vec<AccountId>, StoreError> {
        let g = self.lock()?;
        let mut out: Vec<AccountId> = g
            .accounts
            .values()
            .filter(|a| a.disabled)
            .map(|a| a.id.clone())
            .collect();
        out.sort();
        Ok(out)
    }

    async fn enrollment_codes(
        &self,
        account: Option<&AccountId>,
    ) -> Result<Vec<CodeRecord>, StoreError> {
        let g = self.lock()?;
        let mut out: Vec<CodeRecord> = g
            .codes
            .iter()
            .filter(|(_, c)| account.is_none_or(|a| &c.account == a))
            .map(|(h, c)| CodeRecord {
                account: c.account.clone(),
                id: hex::encode(h)[..CODE_ID_HEX].to_owned(),
                expires_ms: c.expires_ms,
                used: c.used,
            })
            .collect();
        out.sort_by(|a, b| (a.account.as_str(), &a.id).cmp(&(b.account.as_str(), &b.id)));
        Ok(out)
    }

    async fn revoke_enrollment_codes(
        &self,
        account: &AccountId,
        id_prefix: Option<&str>,
    ) -> Result<u64, StoreError> {
        let mut g = self.lock()?;
        let before = g.codes.len();
        let prefix = id_prefix.map(str::to_ascii_lowercase);
        g.codes.retain(|h, c| {
            let matches = &c.account == account
                && !c.used
                && prefix
                    .as_deref()
                    .is_none_or(|p| hex::encode(h).starts_with(p));
            !matches
        });
        Ok((before - g.codes.len()) as u64)
    }
}

impl TrustStore for MemoryStore {
    async fn append_roster(&self, link: &SignedRoster, now_ms: u64) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        let have = g.rosters.len() as u64;
        if link.roster.version() != have + 1 {
            return Err(StoreError::Conflict("roster version"));
        }
        if have >= MAX_STORED_ROSTER_VERSIONS {
            return Err(StoreError::QuotaExceeded {
                what: "roster versions",
                current: have,
                max: MAX_STORED_ROSTER_VERSIONS,
            });
        }
        let leaf = encode_leaf(&LogLeaf::roster(link, now_ms), g.leaves.len() as u64)?;
        check_room(g.leaves.len() as u64)?;
        g.rosters.push(link.clone());
        g.leaves.push(leaf);
        Ok(())
    }

    async fn rosters_after(
        &self,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<SignedRoster>, StoreError> {
        let g = self.lock()?;
        let skip = usize::try_from(after_version).unwrap_or(usize::MAX);
        Ok(g.rosters.iter().skip(skip).take(limit).cloned().collect())
    }

    async fn device_log(
        &self,
        account: &AccountId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let g = self.lock()?;
        let skip = usize::try_from(from_seq).unwrap_or(usize::MAX);
        Ok(g.logs
            .get(account)
            .map(|l| {
                l.iter()
                    .skip(skip)
                    .take(limit)
                    .map(|(e, _)| e.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn device_log_timed(
        &self,
        account: &AccountId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<(LogEntry, u64)>, StoreError> {
        let g = self.lock()?;
        let skip = usize::try_from(from_seq).unwrap_or(usize::MAX);
        Ok(g.logs
            .get(account)
            .map(|l| l.iter().skip(skip).take(limit).cloned().collect())
            .unwrap_or_default())
    }

    async fn device_log_len(&self, account: &AccountId) -> Result<u64, StoreError> {
        Ok(self.lock()?.logs.get(account).map_or(0, |l| l.len() as u64))
    }

    async fn append_device_log(
        &self,
        entry: &LogEntry,
        effects: &LogEffects,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        let inner = &mut *g;
        let account = &entry.body.account;
        if !inner.accounts.contains_key(account) {
            return Err(StoreError::NotFound("account"));
        }
        let len = inner.logs.get(account).map_or(0, |l| l.len() as u64);
        if entry.body.seq != len {
            return Err(StoreError::Conflict("device log entry"));
        }
        if len >= MAX_STORED_LOG_ENTRIES {
            return Err(StoreError::QuotaExceeded {
                what: "device log entries",
                current: len,
                max: MAX_STORED_LOG_ENTRIES,
            });
        }
        let leaf = encode_leaf(
            &LogLeaf::device_log_head(entry, now_ms),
            inner.leaves.len() as u64,
        )?;
        check_room(inner.leaves.len() as u64)?;
        // Check everything before the first change.
        let mut register = None;
        if let Some(new) = &effects.register {
            match inner.devices.get(&new.identity.device_id()) {
                Some(d) if &d.record.account != account || d.record.revoked => {
                    return Err(StoreError::Conflict("device"));
                }
                Some(_) => {}
                None => register = Some(new),
            }
        }
        if let Some(new) = register {
            inner.insert_device(account, &new.identity, new.added_ms);
        }
        for id in &effects.revoke {
            if let Some(d) = inner.devices.get_mut(id) {
                if &d.record.account == account {
                    d.record.revoked = true;
                }
            }
        }
        if let Some(a) = inner.accounts.get_mut(account) {
            a.frozen = effects.frozen;
        }
        inner
            .logs
            .entry(account.clone())
            .or_default()
            .push((entry.clone(), now_ms));
        inner.leaves.push(leaf);
        Ok(())
    }

    async fn enroll_first_device(
        &self,
        account: &AccountId,
        code_hash: [u8; 32],
        identity: &PublicIdentity,
        genesis: &LogEntry,
        now_ms: u64,
    ) -> Result<DeviceRecord, StoreError> {
        let leaves = enrollment_leaves(account, identity, genesis, now_ms);
        let mut g = self.lock()?;
        if g.logs.get(account).is_some_and(|l| !l.is_empty()) {
            return Err(StoreError::EnrollmentRefused);
        }
        check_room(g.leaves.len() as u64 + 1)?;
        let at = g.leaves.len() as u64;
        let leaves = [
            encode_leaf(&leaves[0], at)?,
            encode_leaf(&leaves[1], at + 1)?,
        ];
        let record = g.redeem(account, code_hash, identity, now_ms)?;
        g.logs
            .insert(account.clone(), vec![(genesis.clone(), now_ms)]);
        g.leaves.extend(leaves);
        Ok(record)
    }

    async fn put_attestation(
        &self,
        attestation: &ClientAttestation,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut g = self.lock()?;
        if !g.accounts.contains_key(&attestation.account) {
            return Err(StoreError::NotFound("account"));
        }
        if g.attestations.contains_key(&attestation.account) {
            return Err(StoreError::Conflict("attestation"));
        }
        let device = g
            .logs
            .get(&attestation.account)
            .and_then(|l| l.first())
            .and_then(|(e, _)| genesis_device(e))
            .ok_or(StoreError::NotFound("device log"))?;
        let leaf = encode_leaf(
            &LogLeaf::attestation(attestation, device, now_ms),
            g.leaves.len() as u64,
        )?;
        check_room(g.leaves.len() as u64)?;
        g.leaves.push(leaf);
        g.attestations
            .insert(attestation.account.clone(), attestation.clone());
        Ok(())
    }

    async fn attestation(
        &self,
        account: &AccountId,
    ) -> Result<Option<ClientAttestation>, StoreError> {
        Ok(self.lock()?.attestations.get(account).cloned())
    }

    async fn unattested_clients_after(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<Vec<AccountId>, StoreError> {
        let g = self.lock()?;
        let from = match after {
            Some(a) => std::ops::Bound::Excluded(a.clone()),
            None => std::ops::Bound::Unbounded,
        };
        Ok(g.accounts
            .range((from, std::ops::Bound::Unbounded))
            .filter(|(id, r)| {
                r.role == Role::Client
                    && g.logs.get(*id).is_some_and(|l| !l.is_empty())
                    && !g.attestations.contains_key(*id)
            })
            .take(limit)
            .map(|(id, _)| id.clone())
            .collect())
    }
}

impl PreKeyStore for MemoryStore {
    async fn put_prekeys(
        &self,
        device: &DeviceId,
        upload: PreKeyUpload,
    ) -> Result<PreKeyCounts, StoreError> {
        let mut g = self.lock()?;
        let d = g
            .devices
            .get_mut(device)
            .ok_or(StoreError::NotFound("device"))?;
        let pk = &mut d.prekeys;
        let max = u64::from(MAX_STORED_ONE_TIME_PREKEYS);
        let have = pk.one_time.len() as u64;
        if have + upload.one_time.len() as u64 > max {
            return Err(StoreError::QuotaExceeded {
                what: "one-time prekeys",
                current: have,
                max,
            });
        }
        let have = pk.kem_one_time.len() as u64;
        if have + upload.kem_one_time.len() as u64 > max {
            return Err(StoreError::QuotaExceeded {
                what: "one-time ML-KEM prekeys",
                current: have,
                max,
            });
        }
        let mut ids = BTreeSet::new();
        for k in &upload.one_time {
            if pk.one_time.contains_key(&k.id) || !ids.insert(k.id) {
                return Err(StoreError::Conflict("one-time prekey"));
            }
        }
        let mut ids = BTreeSet::new();
        for k in &upload.kem_one_time {
            if pk.kem_one_time.contains_key(&k.id) || !ids.insert(k.id) {
                return Err(StoreError::Conflict("one-time ML-KEM prekey"));
            }
        }
        if let Some(spk) = upload.signed_prekey {
            pk.signed = Some(spk);
        }
        if let Some(lr) = upload.kem_last_resort {
            pk.kem_last_resort = Some(lr);
        }
        for k in upload.one_time {
            pk.one_time.insert(k.id, k);
        }
        for k in upload.kem_one_time {
            pk.kem_one_time.insert(k.id, k);
        }
        Ok(pk.counts())
    }

    async fn take_bundle(
        &self,
        device: &DeviceId,
    ) -> Result<Option<(PreKeyBundle, PreKeyCounts)>, StoreError> {
        let mut g = self.lock()?;
        let d = g
            .devices
            .get_mut(device)
            .ok_or(StoreError::NotFound("device"))?;
        let identity = d.record.identity.clone();
        let pk = &mut d.prekeys;
        let Some(signed_prekey) = pk.signed.clone() else {
            return Ok(None);
        };
        if pk.kem_one_time.is_empty() && pk.kem_last_resort.is_none() {
            return Ok(None);
        }
        let kem_prekey = match pk.kem_one_time.pop_first() {
            Some((_, k)) => k,
            None => match pk.kem_last_resort.clone() {
                Some(k) => k,
                None => return Ok(None),
            },
        };
        let one_time_prekey = pk.one_time.pop_first().map(|(_, k)| k);
        let counts = pk.counts();
        Ok(Some((
            PreKeyBundle {
                identity,
                signed_prekey,
                one_time_prekey,
                kem_prekey,
            },
            counts,
        )))
    }

    async fn prekey_counts(&self, device: &DeviceId) -> Result<PreKeyCounts, StoreError> {
        let g = self.lock()?;
        let d = g
            .devices
            .get(device)
            .ok_or(StoreError::NotFound("device"))?;
        Ok(d.prekeys.counts())
    }
}

impl MailboxStore for MemoryStore {
    async fn enqueue_with(
        &self,
        envelope: Arc<Envelope>,
        expires_ms: u64,
        quota: Quota,
        on_staged: OnStaged,
    ) -> Result<Enqueued, StoreError> {
        let mut g = self.lock()?;
        let d = g
            .devices
            .get_mut(&envelope.header.recipient)
            .ok_or(StoreError::NotFound("device"))?;
        let mb = &mut d.mailbox;
        let id = repeat_key(&envelope);
        if let Some(seq) = mb.by_id.get(&id) {
            return Ok(Enqueued {
                seq: *seq,
                duplicate: true,
            });
        }
        if let Some((seq, _)) = mb.delivered.get(&id) {
            return Ok(Enqueued {
                seq: *seq,
                duplicate: true,
            });
        }
        let count = mb.by_seq.len() as u64;
        if count.saturating_add(1) > quota.max_count {
            return Err(StoreError::QuotaExceeded {
                what: "pending envelopes",
                current: count,
                max: quota.max_count,
            });
        }
        let size = body_len(&envelope);
        if mb.bytes.saturating_add(size) > quota.max_bytes {
            return Err(StoreError::QuotaExceeded {
                what: "pending bytes",
                current: mb.bytes,
                max: quota.max_bytes,
            });
        }
        let seq = mb.next_seq;
        mb.next_seq += 1;
        mb.bytes += size;
        mb.by_id.insert(id, seq);
        mb.by_seq.insert(
            seq,
            Stored {
                envelope,
                expires_ms,
            },
        );
        // Staged and durable are the same moment here; still under the lock, so that
        // calls for one recipient keep sequence order.
        let _online = on_staged(seq);
        Ok(Enqueued {
            seq,
            duplicate: false,
        })
    }

    async fn pending(
        &self,
        device: &DeviceId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Pending>, StoreError> {
        let g = self.lock()?;
        let Some(d) = g.devices.get(device) else {
            return Ok(Vec::new());
        };
        Ok(d.mailbox
            .by_seq
            .range(after_seq.saturating_add(1)..)
            .take(limit)
            .map(|(seq, s)| Pending {
                seq: *seq,
                envelope: Envelope::clone(&s.envelope),
            })
            .collect())
    }

    async fn ack(
        &self,
        device: &DeviceId,
        message_id: &MessageId,
        seq: u64,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock()?;
        let Some(d) = g.devices.get_mut(device) else {
            return Ok(false);
        };
        let mb = &mut d.mailbox;
        if mb
            .by_seq
            .get(&seq)
            .is_none_or(|s| s.envelope.header.message_id != *message_id)
        {
            return Ok(false);
        }
        if let Some(s) = mb.by_seq.remove(&seq) {
            let key = repeat_key(&s.envelope);
            mb.by_id.remove(&key);
            mb.bytes = mb.bytes.saturating_sub(body_len(&s.envelope));
            mb.delivered.insert(key, (seq, s.expires_ms));
        }
        Ok(true)
    }

    async fn expire(&self, now_ms: u64) -> Result<u64, StoreError> {
        let mut g = self.lock()?;
        let mut removed = 0u64;
        for d in g.devices.values_mut() {
            let mb = &mut d.mailbox;
            let expired: Vec<u64> = mb
                .by_seq
                .iter()
                .filter(|(_, s)| s.expires_ms <= now_ms)
                .map(|(seq, _)| *seq)
                .collect();
            for seq in expired {
                if let Some(s) = mb.by_seq.remove(&seq) {
                    mb.by_id.remove(&repeat_key(&s.envelope));
                    mb.bytes = mb.bytes.saturating_sub(body_len(&s.envelope));
                    removed += 1;
                }
            }
            mb.delivered.retain(|_, (_, expires)| *expires > now_ms);
        }
        Ok(removed)
    }

    async fn queue_stats(&self) -> Result<QueueStats, StoreError> {
        let g = self.lock()?;
        let mut stats = QueueStats::default();
        for d in g.devices.values() {
            stats.count += d.mailbox.by_seq.len() as u64;
            stats.bytes += d.mailbox.bytes;
        }
        Ok(stats)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Nothing to make durable; still report a poisoned lock.
        self.lock().map(|_| ())
    }
}

impl TlogStore for MemoryStore {
    async fn append_leaf(&self, leaf: &LogLeaf, _now_ms: u64) -> Result<u64, StoreError> {
        let mut g = self.lock()?;
        let index = g.leaves.len() as u64;
        check_room(index)?;
        let bytes = encode_leaf(leaf, index)?;
        g.leaves.push(bytes);
        Ok(index)
    }

    async fn leaves(&self, start: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let g = self.lock()?;
        let skip = usize::try_from(start).unwrap_or(usize::MAX);
        Ok(g.leaves
            .iter()
            .enumerate()
            .skip(skip)
            .take(limit.min(MAX_LEAVES_PER_READ))
            .map(|(i, l)| (i as u64, l.clone()))
            .collect())
    }

    async fn leaf_count(&self) -> Result<u64, StoreError> {
        Ok(self.lock()?.leaves.len() as u64)
    }

    async fn put_checkpoint(&self, size: u64, note: &str, _now_ms: u64) -> Result<(), StoreError> {
        self.lock()?.checkpoints.insert(size, note.to_owned());
        Ok(())
    }

    async fn checkpoint(&self, size: u64) -> Result<Option<String>, StoreError> {
        Ok(self.lock()?.checkpoints.get(&size).cloned())
    }

    async fn checkpoints_after(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let g = self.lock()?;
        let from = match after {
            Some(a) => std::ops::Bound::Excluded(a),
            None => std::ops::Bound::Unbounded,
        };
        Ok(g.checkpoints
            .range((from, std::ops::Bound::Unbounded))
            .take(limit)
            .map(|(k, v)| (*k, v.clone()))
            .collect())
    }

    async fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        Ok(self
            .lock()?
            .checkpoints
            .iter()
            .next_back()
            .map(|(k, v)| (*k, v.clone())))
    }
}
