//! The directory beyond assignments, for notices to all clients (docs/PROTOCOL.md §19.7).
//!
//! A notice to all clients goes to every client account, assigned to its sender or not.
//! Its sender must therefore be able to list every client (`list_clients`), read each
//! one's device list and bundles, and send to it with `send_notice`; each client must be
//! able to verify the device log of the staff member who signed it. Nothing else changes:
//! chat and every other kind still follow the routing policy (`policy.rs`).
//!
//! * `list_clients`: staff and advisor devices only, paged by account id with at most
//!   [`MAX_CLIENTS_PER_FRAME`] per answer, charged to the per-device control-request rate
//!   like the other directory requests.
//! * Directory reads of a client account (`list_devices`, `fetch_bundles`) by a device
//!   listed as a staff device in the relay's head roster (the devices that can sign a
//!   notice), assigned or not.
//! * Reads of the device list and device log of an account in the head roster's staff by
//!   a client device (never its bundles): the roster already lists those accounts and
//!   their device keys to every device.
//! * `send_notice` of a notice to all clients, carrying its quorum (checked before, in
//!   `trust_frames.rs`), to a client device whose account is not assigned to the sender.

use sealpost_protocol::identity::AccountId;
use sealpost_protocol::wire::{BoundedVec, ErrorCode, FrameBody, Role, MAX_CLIENTS_PER_FRAME};
use tracing::debug;

use super::{refuse, reply, store_failure, Authenticated, Handled, Relay};
use crate::store::{AccountRecord, Store};

/// Which directory read is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DirectoryRead {
    /// The device list or the device log.
    Devices,
    /// Prekey bundles (to start sessions).
    Bundles,
}

fn is_staff(role: Role) -> bool {
    matches!(role, Role::Staff | Role::Advisor)
}

impl<S: Store> Relay<S> {
    /// `list_clients`: every client account after `after`, ascending, paged.
    pub(super) async fn list_clients(
        &self,
        me: &Authenticated,
        id: u64,
        after: Option<AccountId>,
    ) -> Handled {
        if !is_staff(me.role) {
            self.trust_refused("list_clients");
            debug!(device = %me.device, "list_clients refused: not a staff or advisor device");
            return refuse(
                id,
                ErrorCode::Forbidden,
                "only staff and advisor devices may list the client accounts",
            );
        }
        // One more than a page tells whether more follow.
        let mut clients = match self
            .store
            .clients_after(after.as_ref(), MAX_CLIENTS_PER_FRAME + 1)
            .await
        {
            Ok(c) => c,
            Err(e) => return store_failure(id, &e),
        };
        let more = clients.len() > MAX_CLIENTS_PER_FRAME;
        clients.truncate(MAX_CLIENTS_PER_FRAME);
        match BoundedVec::new(clients) {
            Ok(clients) => reply(id, FrameBody::Clients { clients, more }),
            Err(_) => refuse(id, ErrorCode::Internal, "too many clients"),
        }
    }

    /// May `me` read `account`'s directory entry beyond what the routing policy allows
    /// (see the module documentation)?
    pub(super) fn notice_directory_allows(
        &self,
        me: &Authenticated,
        account: &AccountRecord,
        read: DirectoryRead,
    ) -> bool {
        let Some(chain) = self.trust.chain() else {
            return false;
        };
        let head = chain.head();
        match (me.role, account.role) {
            (Role::Staff | Role::Advisor, Role::Client) => {
                head.staff_device(&me.account, &me.device).is_some()
            }
            (Role::Client, Role::Staff | Role::Advisor) => {
                read == DirectoryRead::Devices && head.member(&account.id).is_some()
            }
            _ => false,
        }
    }

    /// The account record of `account`, if `me` may read its directory entry (`read`):
    /// by the routing policy, or for notices to all clients.
    pub(super) async fn authorize_directory(
        &self,
        me: &Authenticated,
        id: u64,
        account: &AccountId,
        read: DirectoryRead,
    ) -> Result<AccountRecord, Handled> {
        let rec = match self.store.account(account).await {
            Ok(Some(a)) => a,
            Ok(None) => return Err(refuse(id, ErrorCode::NotFound, "account not found")),
            Err(e) => return Err(store_failure(id, &e)),
        };
        // The firm's archive (§22) checks the senders of every conversation it records.
        if self.archive_account().is_some_and(|a| a == me.account) {
            return Ok(rec);
        }
        match self.may_reach_account(me, &rec).await {
            Ok(Ok(())) => Ok(rec),
            Ok(Err(_)) if self.notice_directory_allows(me, &rec, read) => Ok(rec),
            Ok(Err(why)) => {
                self.observe(crate::security::Observation::UnassignedContact {
                    account: me.account.clone(),
                    device: me.device,
                    target: account.clone(),
                });
                Err(refuse(id, ErrorCode::Forbidden, &why))
            }
            Err(e) => Err(store_failure(id, &e)),
        }
    }
}
