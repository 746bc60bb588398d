//! Alerts about this device's own account (docs/PROTOCOL.md §21.3): security events whose
//! rule has the relay's `notify_devices` measure (a burst of failed authentications, a
//! recovery requested, link requests no device started, ...), told to the account's
//! other devices. They are the relay's word, not a verified fact: a relay can invent or
//! withhold them, so they only ever warn; what a device trusts comes from the roster,
//! the device logs and the transparency log.
//!
//! Fetched once per connection (after authentication) from the id this device saw last,
//! and pushed while connected. The cursor (`alerts_seen`) is saved in the profile with
//! the events handed out, so an alert is shown once.

use sealpost_protocol::wire::SecurityEventInfo;

use crate::client::{Client, Event};

/// Pages of alerts fetched at most per connection (each at most
/// `MAX_SECURITY_EVENTS_PER_FRAME`); the rest comes with the next connection.
pub const MAX_ALERT_PAGES: usize = 4;

impl Client {
    /// Fetch the alerts stored for this account since the last one shown, into
    /// [`Client::take_events`]. Best effort: a failure is logged and the same alerts are
    /// asked for on the next connection (the cursor has not moved).
    pub(crate) async fn catch_up_alerts(&mut self) {
        for _ in 0..MAX_ALERT_PAGES {
            let since = self.alerts_seen;
            let page = match self.conn() {
                Ok(c) => c.get_account_alerts(since).await,
                Err(_) => return,
            };
            let (alerts, more) = match page {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "account alerts not fetched; asked again on the next connection");
                    return;
                }
            };
            let mut any = false;
            for a in alerts {
                if let Some(ev) = self.alert_event(a) {
                    self.events.push(ev);
                    any = true;
                }
            }
            if any {
                if let Err(e) = self.save() {
                    tracing::warn!(error = %e, "saving the alert cursor failed");
                    return;
                }
            }
            if !more {
                return;
            }
        }
    }

    /// The event for an alert this device has not shown yet (and move the cursor), or
    /// `None` for one it has.
    pub(crate) fn alert_event(&mut self, a: SecurityEventInfo) -> Option<Event> {
        if a.id <= self.alerts_seen {
            return None;
        }
        self.alerts_seen = a.id;
        Some(Event::SecurityAlert {
            id: a.id,
            time_ms: a.time_ms,
            severity: a.severity.name().to_owned(),
            rule: a.rule.as_str().to_owned(),
            device: a.device,
            detail: a.detail.as_str().to_owned(),
        })
    }

    /// The last alert id this device showed.
    pub fn alerts_seen(&self) -> u64 {
        self.alerts_seen
    }
}
