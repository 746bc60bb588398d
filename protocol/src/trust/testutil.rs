//! Shared fixtures for the trust tests: an organisation, its staff and a verified chain.

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::identity::{AccountId, IdentityKeyPair};

use super::approval::{Approval, ApprovalBundle, ApprovalRequest, SignerRef};
use super::roster::{
    ApprovalPolicy, Operation, Roster, RosterChain, SignedRoster, StaffMember, StaffRole,
};
use super::OrgRoot;

/// 2024-01-01T00:00:00Z.
pub(crate) const T0: u64 = 1_704_067_200_000;
pub(crate) const HOUR: u64 = 60 * 60 * 1000;

pub(crate) struct Staff {
    pub account: AccountId,
    pub role: StaffRole,
    pub devices: Vec<IdentityKeyPair>,
}

impl Staff {
    pub fn signer(&self, device: usize) -> SignerRef {
        SignerRef::new(self.account.clone(), self.devices[device].device_id())
    }

    pub fn member(&self) -> StaffMember {
        StaffMember {
            account: self.account.clone(),
            role: self.role,
            devices: self.devices.iter().map(|d| d.public().clone()).collect(),
        }
    }
}

pub(crate) struct Org {
    pub rng: StdRng,
    pub root: OrgRoot,
    /// 0 ops.alice (operations, two devices), 1 sec.bob (security), 2 comp.carol
    /// (compliance), 3 adv.dave (advisor), 4 ops.erin (operations).
    pub staff: Vec<Staff>,
    pub v1: SignedRoster,
}

pub(crate) fn acct(s: &str) -> AccountId {
    AccountId::new(s).unwrap()
}

impl Org {
    pub fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let root = OrgRoot::generate(&mut rng);
        let mut staff = Vec::new();
        for (name, role, n) in [
            ("ops.alice", StaffRole::Operations, 2),
            ("sec.bob", StaffRole::Security, 1),
            ("comp.carol", StaffRole::Compliance, 1),
            ("adv.dave", StaffRole::Advisor, 1),
            ("ops.erin", StaffRole::Operations, 1),
        ] {
            let devices = (0..n)
                .map(|_| IdentityKeyPair::generate(&mut rng))
                .collect();
            staff.push(Staff {
                account: acct(name),
                role,
                devices,
            });
        }
        let members = staff.iter().map(Staff::member).collect();
        let roster = Roster::new(1, None, T0, members, ApprovalPolicy::default()).unwrap();
        let v1 = root.sign_genesis(roster).unwrap();
        Self {
            rng,
            root,
            staff,
            v1,
        }
    }

    pub fn chain(&self) -> RosterChain {
        RosterChain::verify(
            &self.root.public().fingerprint(),
            vec![self.v1.clone()],
            None,
            T0,
        )
        .unwrap()
    }

    /// The first staff member with `role`: its account and a copy of its device 0.
    pub fn staff_member(&self, role: StaffRole) -> (AccountId, IdentityKeyPair) {
        let s = self.staff.iter().find(|s| s.role == role).unwrap();
        let (ed, x) = s.devices[0].secret_bytes();
        (s.account.clone(), IdentityKeyPair::from_secrets(&ed, &x))
    }

    /// A bundle initiated by `staff[initiator]` (device 0) and approved by each
    /// `(staff, device)` in `approvers`.
    pub fn bundle(
        &mut self,
        op: Operation,
        params: Vec<u8>,
        roster_version: u64,
        expires_ms: u64,
        initiator: usize,
        approvers: &[(usize, usize)],
    ) -> ApprovalBundle {
        let init = self.staff[initiator].signer(0);
        let request =
            ApprovalRequest::new(op, params, roster_version, expires_ms, init, &mut self.rng)
                .unwrap();
        let mut bundle =
            ApprovalBundle::initiate(request.clone(), &self.staff[initiator].devices[0]).unwrap();
        for &(s, d) in approvers {
            let who = &self.staff[s];
            bundle
                .push(Approval::sign(
                    &request,
                    who.account.clone(),
                    &who.devices[d],
                ))
                .unwrap();
        }
        bundle
    }
}
