//! What happens when a test ends without reaching its clean-up: everything killed, its queues still deleted.

use super::*;

impl Drop for System {
    /// The test did not reach cleanup (it failed): kill everything and still delete the queues,
    /// from a thread with its own runtime since `Drop` cannot await.
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        for service in self
            .gateway
            .iter_mut()
            .chain(self.workers.iter_mut())
            .chain(self.bridge.iter_mut())
            .chain(
                self.pairs
                    .iter_mut()
                    .flat_map(|p| p.gateway.iter_mut().chain(p.bridge.iter_mut())),
            )
        {
            service.start_kill();
        }
        let url = self.amqp_url.clone();
        let queues = std::mem::take(&mut self.queues);
        let exchanges = std::mem::take(&mut self.exchanges);
        let deleted = std::thread::spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot build a runtime for cleanup")?;
            rt.block_on(broker::delete_topology(&url, &queues, &exchanges))
        })
        .join();
        match deleted {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("[harness] cleanup after failure: {e:#}"),
            Err(_) => eprintln!("[harness] cleanup after failure panicked"),
        }
    }
}
