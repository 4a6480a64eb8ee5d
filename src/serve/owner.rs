//! Whose quota a proxied call spends, when the gateway has a vault: the vault's stored key
//! says it for free, before the client's own order (its cache, the memo every process
//! shares, else one `/v2/key/info`). A lookup reaches Torn before anyone knows whose quota
//! it spends, so every one avoided is a unit no owner loses unaccounted.

use crate::identity::ApiKey;
use crate::torn::TornClient;
use crate::vault::Vault;

/// Tells `client` the owner of `key` from `vault` when the client does not know it yet. A
/// vault failure is logged and the client resolves the owner its own way.
pub(crate) async fn learn(client: &TornClient, vault: Option<&Vault>, key: &ApiKey) {
    let Some(vault) = vault else { return };
    if client.known_owner(key).await.is_some() {
        return;
    }
    match vault.known_key(&key.hash()).await {
        Ok(Some(info)) => client.remember_owner(key, info).await,
        Ok(None) => {}
        Err(e) => {
            tracing::debug!(error = %e, key_hash = key.hash().short(), "vault owner lookup failed; the client resolves it");
        }
    }
}
