//! The SSRF guard ([`shared::ssrf`]) as reqwest's DNS resolver: the
//! addresses it returns are the only ones the connector can use, so the
//! check is on the addresses actually connected to.

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
pub use shared::ssrf::*;

/// reqwest's DNS resolver with the address policy applied.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub policy: Policy,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = resolve_checked(&policy, &host).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}
