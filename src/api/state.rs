//! What every handler shares: the settings, the Redis pools and the key names,
//! made once when `serve` starts and cloned (cheaply) into each request.

use super::error::ApiResult;
use crate::config::Settings;
use crate::queue::Keys;
use crate::store::Store;
use std::sync::Arc;

/// What every handler shares: settings, the Redis pools, key names.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub keys: Keys,
}

impl AppState {
    pub fn new(settings: Arc<Settings>) -> Result<AppState, crate::store::StoreError> {
        let block = std::time::Duration::from_millis(settings.worker.block_ms);
        let store = Store::new(&settings.redis, block, 4)?;
        Ok(AppState {
            keys: Keys::new(&settings.redis.prefix),
            store,
            settings,
        })
    }

    /// A connection, or 503 when Redis is away.
    pub async fn conn(&self) -> ApiResult<crate::store::Conn> {
        Ok(self.store.conn().await?)
    }
}
