//! A stop request for long-running commands (`sealpost listen`, `security follow`,
//! `sealpost-archiver run`): Ctrl-C or SIGTERM, as a terminal or a service manager sends.

use tokio::sync::watch;

/// A receiver that turns `true` on the first Ctrl-C (SIGINT) or SIGTERM. Long-running
/// loops check it between their steps, so they stop where nothing is half done.
/// Must be called inside a tokio runtime.
pub fn stop_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        let _ = tx.send(true);
    });
    rx
}
