//! Prometheus metrics. Names are constants so dashboards and tests agree with the code.
//! Values never include keys, envelope bodies or anything a peer sent beyond counts.

/// Connections accepted (counter).
pub const CONNECTIONS: &str = "sealpost_connections_total";
/// Connections refused or sent to Retry (counter, label `reason`).
pub const CONNECTIONS_REFUSED: &str = "sealpost_connections_refused_total";
/// Open connections (gauge).
pub const CONNECTIONS_ACTIVE: &str = "sealpost_connections_active";
/// Authenticated devices online (gauge).
pub const DEVICES_AUTHENTICATED: &str = "sealpost_devices_authenticated";
/// Envelopes durably accepted (counter).
pub const ENVELOPES_ACCEPTED: &str = "sealpost_envelopes_accepted_total";
/// Envelopes delivered to a device (counter; redeliveries count again).
pub const ENVELOPES_DELIVERED: &str = "sealpost_envelopes_delivered_total";
/// Envelopes acknowledged and deleted (counter).
pub const ENVELOPES_ACKED: &str = "sealpost_envelopes_acked_total";
/// Envelopes expired undelivered (counter).
pub const ENVELOPES_EXPIRED: &str = "sealpost_envelopes_expired_total";
/// Pending envelopes, all mailboxes (gauge).
pub const QUEUE_DEPTH: &str = "sealpost_queue_depth";
/// Pending body bytes, all mailboxes (gauge).
pub const QUEUE_BYTES: &str = "sealpost_queue_bytes";
/// Frame bytes received (counter).
pub const BYTES_RECEIVED: &str = "sealpost_bytes_received_total";
/// Frame bytes sent (counter).
pub const BYTES_SENT: &str = "sealpost_bytes_sent_total";
/// Failed authentications and enrolments (counter).
pub const AUTH_FAILURES: &str = "sealpost_auth_failures_total";
/// Requests refused by a rate limit (counter, label `limit`).
pub const RATE_LIMITED: &str = "sealpost_rate_limited_total";
/// A rate limiter's key table was full for a key it does not track (counter, label
/// `limit`): the request was refused, or an authentication failure could not be
/// recorded (and its address or device is refused until the table has room).
pub const RATE_LIMIT_KEYS_FULL: &str = "sealpost_rate_limit_keys_full_total";
/// Frames that did not decode (counter).
pub const BAD_FRAMES: &str = "sealpost_bad_frames_total";
/// Attachment blob bytes received and stored (counter).
pub const BLOB_BYTES_RECEIVED: &str = "sealpost_blob_bytes_received_total";
/// Attachment blob bytes sent to downloaders (counter).
pub const BLOB_BYTES_SENT: &str = "sealpost_blob_bytes_sent_total";
/// Attachment blobs durably stored (counter).
pub const BLOBS_STORED: &str = "sealpost_blobs_stored_total";
/// Attachment blobs expired (counter).
pub const BLOBS_EXPIRED: &str = "sealpost_blobs_expired_total";
/// Attachment transfer streams refused or reset (counter, label `reason`).
pub const BLOB_TRANSFERS_REFUSED: &str = "sealpost_blob_transfers_refused_total";
/// Requests refused by a trust rule (counter, label `reason`: `device_not_active`,
/// `probation`, `frozen`, `notice_via_send`, `notice`, `notice_audience`, `genesis`,
/// `log_entry`, `roster`, `link`, `auth_not_in_log`, `stored_log_invalid`).
pub const TRUST_REFUSALS: &str = "sealpost_trust_refusals_total";
/// Device-log entries appended, enrolments included (counter, label `action`).
pub const DEVICE_LOG_APPENDS: &str = "sealpost_device_log_appends_total";
/// Devices revoked by a device-log entry (counter).
pub const DEVICES_REVOKED: &str = "sealpost_devices_revoked_total";
/// Notices accepted by `send_notice` (counter).
pub const NOTICES_ACCEPTED: &str = "sealpost_notices_accepted_total";
/// Newest roster version held (gauge; 0 = none).
pub const ROSTER_VERSION: &str = "sealpost_roster_version";
/// Link requests held in memory, open and completed (gauge).
pub const PENDING_LINKS: &str = "sealpost_pending_links";
/// Link requests evicted by newer ones while the per-account or total bound was reached
/// (counter; a steady rise means someone floods `link_start`).
pub const LINKS_EVICTED: &str = "sealpost_links_evicted_total";
/// Security events raised (counter, labels `rule` and `severity`; docs/OPERATIONS.md,
/// "Security events").
pub const SECURITY_EVENTS: &str = "sealpost_security_events_total";
/// Security events not written to the store or the SIEM export because the writer fell
/// behind by more than `security::MAX_UNWRITTEN_EVENTS` (counter; the live feed and the
/// counter above still had them).
pub const SECURITY_EVENTS_DROPPED: &str = "sealpost_security_events_dropped_total";
/// Writing security events to the store or the SIEM export failed (counter, label
/// `sink`: `store`, `siem_file`, `siem_socket`).
pub const SECURITY_SINK_ERRORS: &str = "sealpost_security_sink_errors_total";
/// Time from receiving a `send` to its durable acceptance, seconds (histogram).
pub const SEND_LATENCY: &str = "sealpost_send_commit_seconds";
/// Time to handle any request, seconds (histogram, label `type`).
pub const REQUEST_LATENCY: &str = "sealpost_request_seconds";
/// Storage transactions committed (counter; SQLite: one `fsync` each).
pub const STORE_COMMITS: &str = "sealpost_store_commits_total";
/// Write operations in those transactions (counter; divided by the commits, the
/// average group-commit batch).
pub const STORE_WRITES: &str = "sealpost_store_writes_total";
/// Envelopes acknowledged before their batch was written, so only a tombstone was
/// (counter).
pub const STORE_ACKED_BEFORE_WRITE: &str = "sealpost_store_acked_before_write_total";
/// Time one storage transaction took, from its start to its commit, seconds
/// (histogram).
pub const STORE_COMMIT_SECONDS: &str = "sealpost_store_commit_seconds";

/// Build information (gauge, always 1; labels `version` and `commit`).
pub const BUILD_INFO: &str = "sealpost_build_info";

/// The Prometheus handle of this process (one global recorder per process).
static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
    std::sync::OnceLock::new();

/// Install the global Prometheus recorder (once per process; later calls, as in tests that
/// start several relays, reuse it) and return its handle, which renders the exposition.
/// The HTTP endpoint that serves it is [`crate::health::serve`].
pub fn install() -> Result<metrics_exporter_prometheus::PrometheusHandle, String> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let buckets = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    ];
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&buckets)
        .map_err(|e| e.to_string())?
        .build_recorder();
    let handle = recorder.handle();
    match metrics::set_global_recorder(recorder) {
        Ok(()) => {
            let _ = HANDLE.set(handle.clone());
            metrics_process::Collector::default().describe();
            Ok(HANDLE.get().cloned().unwrap_or(handle))
        }
        // Another recorder was installed first (a test harness): render what this one
        // records, which is nothing, rather than fail.
        Err(_) => Ok(HANDLE.get_or_init(|| handle).clone()),
    }
}

/// The exposition: process metrics collected now, then every recorded metric.
pub fn render(handle: &metrics_exporter_prometheus::PrometheusHandle) -> String {
    metrics_process::Collector::default().collect();
    handle.render()
}

/// Describe every metric (help text in the exposition).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        BUILD_INFO,
        "Build of this relay (always 1; labels version and commit)"
    );
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "commit" => env!("SEALPOST_COMMIT")).set(1.0);
    describe_counter!(CONNECTIONS, "QUIC connections accepted");
    describe_counter!(
        SECURITY_EVENTS,
        "Security events raised, by rule and severity"
    );
    describe_counter!(
        SECURITY_EVENTS_DROPPED,
        "Security events the writer could not keep up with (not stored, not exported)"
    );
    describe_counter!(
        SECURITY_SINK_ERRORS,
        "Failures writing security events, by sink"
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "QUIC connection attempts refused or sent to Retry"
    );
    describe_gauge!(CONNECTIONS_ACTIVE, "Open QUIC connections");
    describe_gauge!(DEVICES_AUTHENTICATED, "Authenticated devices online");
    describe_counter!(ENVELOPES_ACCEPTED, "Envelopes durably accepted");
    describe_counter!(
        ENVELOPES_DELIVERED,
        "Envelopes delivered (redeliveries included)"
    );
    describe_counter!(
        ENVELOPES_ACKED,
        "Envelopes acknowledged by their recipient and deleted"
    );
    describe_counter!(ENVELOPES_EXPIRED, "Envelopes expired undelivered");
    describe_gauge!(QUEUE_DEPTH, "Pending envelopes in all mailboxes");
    describe_gauge!(
        QUEUE_BYTES,
        Unit::Bytes,
        "Pending envelope bytes in all mailboxes"
    );
    describe_counter!(BYTES_RECEIVED, Unit::Bytes, "Frame bytes received");
    describe_counter!(BYTES_SENT, Unit::Bytes, "Frame bytes sent");
    describe_counter!(AUTH_FAILURES, "Failed authentications and enrolments");
    describe_counter!(RATE_LIMITED, "Requests refused by a rate limit");
    describe_counter!(
        RATE_LIMIT_KEYS_FULL,
        "A rate limiter's key table was full for a new key (refused, or a failure not recorded)"
    );
    describe_counter!(BAD_FRAMES, "Frames that failed to decode");
    describe_counter!(
        BLOB_BYTES_RECEIVED,
        Unit::Bytes,
        "Attachment blob bytes received and stored"
    );
    describe_counter!(BLOB_BYTES_SENT, Unit::Bytes, "Attachment blob bytes sent");
    describe_counter!(BLOBS_STORED, "Attachment blobs durably stored");
    describe_counter!(BLOBS_EXPIRED, "Attachment blobs expired");
    describe_counter!(
        BLOB_TRANSFERS_REFUSED,
        "Attachment transfer streams refused or reset"
    );
    describe_counter!(TRUST_REFUSALS, "Requests refused by a trust rule");
    describe_counter!(
        DEVICE_LOG_APPENDS,
        "Device-log entries appended (enrolments included)"
    );
    describe_counter!(DEVICES_REVOKED, "Devices revoked by a device-log entry");
    describe_counter!(NOTICES_ACCEPTED, "Signed notices accepted");
    describe_gauge!(ROSTER_VERSION, "Newest roster version held");
    describe_gauge!(PENDING_LINKS, "Device link requests held in memory");
    describe_counter!(
        LINKS_EVICTED,
        "Link requests without an offer evicted by newer ones"
    );
    describe_histogram!(
        SEND_LATENCY,
        Unit::Seconds,
        "Send received to durably accepted"
    );
    describe_histogram!(REQUEST_LATENCY, Unit::Seconds, "Request handling time");
    describe_counter!(STORE_COMMITS, "Storage transactions committed");
    describe_counter!(STORE_WRITES, "Write operations in committed transactions");
    describe_counter!(
        STORE_ACKED_BEFORE_WRITE,
        "Envelopes acknowledged before their batch was written (only a tombstone was)"
    );
    describe_histogram!(
        STORE_COMMIT_SECONDS,
        Unit::Seconds,
        "Storage transaction time, start to commit"
    );
}
