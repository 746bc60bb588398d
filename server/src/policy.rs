//! Routing policy: who may message whom. Pure functions over account records.
//!
//! * Devices of one account may always message each other (keeping a person's devices
//!   in step).
//! * A client may message only the advisors and staff it is assigned to.
//! * Advisors and staff may message their assigned clients, and each other.
//! * A client can never reach another client.
//!
//! A frozen account is not refused here: the device-log send rule (`trust.rs`,
//! docs/PROTOCOL.md §19.6) refuses the sensitive kinds from it and lets it keep talking
//! to its advisor, who must reach the client to check a "this wasn't me" out of band.

use sealpost_protocol::identity::AccountId;
use sealpost_protocol::wire::Role;

/// Why a message is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Client to client.
    #[error("a client cannot message another client")]
    ClientToClient,
    /// Client and staff member not assigned to each other.
    #[error("{client} is not assigned to {staff}")]
    NotAssigned {
        /// The client.
        client: AccountId,
        /// The advisor or staff account.
        staff: AccountId,
    },
}

/// What the policy needs to know about the two accounts.
#[derive(Clone, Copy, Debug)]
pub struct Party<'a> {
    /// The account.
    pub account: &'a AccountId,
    /// Its role.
    pub role: Role,
}

/// The assignment that must exist for `sender` to message `recipient`, if any:
/// `Ok(None)` = allowed without one, `Ok(Some((client, staff)))` = allowed if assigned.
pub fn required_assignment<'a>(
    sender: Party<'a>,
    recipient: Party<'a>,
) -> Result<Option<(&'a AccountId, &'a AccountId)>, Refusal> {
    if sender.account == recipient.account {
        return Ok(None);
    }
    match (sender.role, recipient.role) {
        (Role::Client, Role::Client) => Err(Refusal::ClientToClient),
        (Role::Client, _) => Ok(Some((sender.account, recipient.account))),
        (_, Role::Client) => Ok(Some((recipient.account, sender.account))),
        _ => Ok(None),
    }
}

/// Apply the policy given the assignment answer.
pub fn decide(sender: Party<'_>, recipient: Party<'_>, assigned: bool) -> Result<(), Refusal> {
    match required_assignment(sender, recipient)? {
        None => Ok(()),
        Some(_) if assigned => Ok(()),
        Some((client, staff)) => Err(Refusal::NotAssigned {
            client: client.clone(),
            staff: staff.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(a: &AccountId, role: Role) -> Party<'_> {
        Party { account: a, role }
    }

    #[test]
    fn matrix() {
        let c1 = AccountId::new("client1").unwrap();
        let c2 = AccountId::new("client2").unwrap();
        let adv = AccountId::new("advisor").unwrap();
        let ops = AccountId::new("ops").unwrap();
        assert_eq!(
            decide(p(&c1, Role::Client), p(&c2, Role::Client), true),
            Err(Refusal::ClientToClient)
        );
        assert!(decide(p(&c1, Role::Client), p(&c1, Role::Client), false).is_ok());
        assert!(decide(p(&c1, Role::Client), p(&adv, Role::Advisor), true).is_ok());
        assert!(matches!(
            decide(p(&c1, Role::Client), p(&adv, Role::Advisor), false),
            Err(Refusal::NotAssigned { .. })
        ));
        assert!(decide(p(&adv, Role::Advisor), p(&c1, Role::Client), true).is_ok());
        assert!(decide(p(&ops, Role::Staff), p(&adv, Role::Advisor), false).is_ok());
        assert_eq!(
            required_assignment(p(&ops, Role::Staff), p(&c1, Role::Client)).unwrap(),
            Some((&c1, &ops))
        );
    }
}
