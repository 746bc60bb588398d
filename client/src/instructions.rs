//! Client instructions (docs/PROTOCOL.md §18.1, §19.6): a payment, a withdrawal, a
//! transfer, or a change of a standing instruction (a payout address, a beneficiary).
//!
//! An instruction is content `instruction` and travels under the sensitive envelope kind
//! `instruction`, never as chat. So the cooling-off rule applies to it three times: this
//! client refuses to send one from a device on probation (or from a frozen account),
//! before anything leaves the device; the relay refuses the envelope; and every receiving
//! client refuses it, and reports the refusal, if its sending device is on probation
//! (judged by the content, whatever the envelope's label says). A sync copy for the
//! sender's other devices is judged by the instruction it copies.

use sealpost_protocol::content::{Content, InstructionCategory, MAX_TEXT_LEN};
use sealpost_protocol::identity::AccountId;
use sealpost_protocol::wire::BoundedString;

use crate::client::{Client, ClientError, SendReport};

impl Client {
    /// Send an instruction of `category` to `to` (an advisor or staff account this
    /// account may write to), with `body` in the sender's words. Refused with
    /// [`ClientError::OnProbation`] while this device is on probation, and with
    /// [`ClientError::NotAllowed`] while its account is frozen.
    pub async fn send_instruction(
        &mut self,
        to: &AccountId,
        category: InstructionCategory,
        body: &str,
    ) -> Result<SendReport, ClientError> {
        if body.trim().is_empty() {
            return Err(ClientError::Invalid("the instruction is empty".into()));
        }
        if body.len() > MAX_TEXT_LEN {
            return Err(ClientError::Invalid(format!(
                "instructions are at most {MAX_TEXT_LEN} bytes"
            )));
        }
        self.fan_out(
            to,
            Content::Instruction {
                category,
                body: BoundedString::truncating(body),
            },
            true,
        )
        .await
    }

    /// For adversarial tests: send an instruction without this client's own probation
    /// and freeze check, so that it reaches the relay (which must refuse it).
    #[doc(hidden)]
    pub async fn send_instruction_unchecked_for_tests(
        &mut self,
        to: &AccountId,
        category: InstructionCategory,
        body: &str,
    ) -> Result<SendReport, ClientError> {
        self.fan_out_as(
            to,
            Content::Instruction {
                category,
                body: BoundedString::truncating(body),
            },
            false,
            None,
            false,
        )
        .await
    }
}
