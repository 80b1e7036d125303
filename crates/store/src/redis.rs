//! [`RedisStore`]: sandbox records in Redis, shared by every server process (and machine) that
//! points at the same Redis and key prefix.
//!
//! # Layout (all keys under `<prefix>:`)
//!
//! - `sb:<id>`: a hash with `v` (the record's version, the compare-and-set token) and `r` (the
//!   record as JSON);
//! - `index`: a sorted set of ids scored by insertion order, so that listings are oldest first;
//! - `live`: the set of ids that count against the instance limit ([`SandboxRecord::is_live`]);
//! - `seq`: the insertion counter;
//! - `lock:<name>`: a lock ([`SandboxStore::try_lock`]): its holder, expiring after its TTL.
//!
//! Every operation that reads and writes is one Lua script, so it is atomic on the server:
//! `insert` checks the id and the instance limit and inserts in one step, `update` compares the
//! version and writes in one step. Several processes can therefore never overshoot the limit or
//! lose an update. (The scripts touch keys they compute from ids, so the store needs one Redis,
//! not a Redis Cluster.)
//!
//! # Connections and failures
//!
//! Connections come from a `deadpool-redis` pool: a broken connection is dropped and a new one
//! made on the next use, so the store reconnects by itself when Redis comes back. Each
//! operation is bounded by [`OP_TIMEOUT`] (and getting a connection by the pool's timeouts), so
//! that when Redis is down or stuck a request fails fast with [`StoreError::Unavailable`]
//! instead of hanging.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis::{self, IntoConnectionInfo, Script};
use deadpool_redis::{Pool, Runtime, Timeouts};
use sandboxd_core::store::{SandboxRecord, SandboxStore, StoreError};

/// Longest one store operation may take, connection included.
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// Connections kept in the pool at most.
const POOL_SIZE: usize = 16;

/// Where the Redis server is and how to log in (AgentScope's `REDIS_*` settings).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// Host name or address (`REDIS_SERVER`).
    pub host: String,
    /// Port (`REDIS_PORT`).
    pub port: u16,
    /// Database number (`REDIS_DB`).
    pub db: i64,
    /// ACL user name (`REDIS_USER`), if any.
    pub username: Option<String>,
    /// Password (`REDIS_PASSWORD`), if any.
    pub password: Option<String>,
    /// Prefix of every key, so that several deployments can share one Redis.
    pub prefix: String,
}

impl std::fmt::Debug for RedisConfig {
    // The password never shows in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            host: "localhost".into(),
            port: 6379,
            db: 0,
            username: None,
            password: None,
            prefix: "sandboxd".into(),
        }
    }
}

impl RedisConfig {
    /// `host:port/db`, for messages (never the password).
    pub fn address(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.db)
    }

    fn connection_info(&self) -> redis::ConnectionInfo {
        let mut redis_info = redis::RedisConnectionInfo::default().set_db(self.db);
        if let Some(u) = &self.username {
            redis_info = redis_info.set_username(u.clone());
        }
        if let Some(p) = &self.password {
            redis_info = redis_info.set_password(p.clone());
        }
        redis::ConnectionAddr::Tcp(self.host.clone(), self.port)
            .into_connection_info()
            .expect("a TCP address is a valid connection info")
            .set_redis_settings(redis_info)
    }
}

const INSERT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 'exists' end
local limit = tonumber(ARGV[3])
if limit > 0 and redis.call('SCARD', KEYS[3]) >= limit then return 'limit' end
local seq = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[1], 'v', 1, 'r', ARGV[2])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
if ARGV[4] == '1' then redis.call('SADD', KEYS[3], ARGV[1]) end
return 'ok'
";

const UPDATE: &str = r"
local v = redis.call('HGET', KEYS[1], 'v')
if not v then return 'notfound' end
if v ~= ARGV[3] then return 'conflict' end
redis.call('HSET', KEYS[1], 'v', tonumber(v) + 1, 'r', ARGV[2])
if ARGV[4] == '1' then
  redis.call('SADD', KEYS[2], ARGV[1])
else
  redis.call('SREM', KEYS[2], ARGV[1])
end
return 'ok'
";

const REMOVE: &str = r"
local r = redis.call('HMGET', KEYS[1], 'v', 'r')
if not r[1] then return {} end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
return r
";

const LIST: &str = r"
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for _, id in ipairs(ids) do
  local r = redis.call('HMGET', ARGV[1] .. id, 'v', 'r')
  if r[1] then
    table.insert(out, r[1])
    table.insert(out, r[2])
  end
end
return out
";

const LOCK: &str = r"
local h = redis.call('GET', KEYS[1])
if h and h ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
";

/// Errors of connecting a [`RedisStore`].
#[derive(Debug, thiserror::Error)]
pub enum RedisStoreError {
    /// The pool could not be set up from the configuration.
    #[error("redis at {address}: {message}")]
    Config {
        /// `host:port/db`.
        address: String,
        /// What is wrong.
        message: String,
    },
    /// Redis did not answer the first `PING`.
    #[error("redis at {address} does not answer: {source}")]
    Unreachable {
        /// `host:port/db`.
        address: String,
        /// Why.
        source: StoreError,
    },
}

/// Sandbox records in Redis.
pub struct RedisStore {
    pool: Pool,
    prefix: String,
    address: String,
    insert: Script,
    update: Script,
    remove: Script,
    list: Script,
    lock: Script,
    unlock: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("address", &self.address)
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

impl RedisStore {
    /// Connect to Redis (checking it answers a `PING`).
    pub async fn connect(config: &RedisConfig) -> Result<RedisStore, RedisStoreError> {
        let address = config.address();
        let mut cfg = deadpool_redis::Config::from_connection_info(config.connection_info());
        cfg.pool = Some(deadpool_redis::PoolConfig {
            max_size: POOL_SIZE,
            timeouts: Timeouts {
                wait: Some(OP_TIMEOUT),
                create: Some(Duration::from_secs(2)),
                recycle: Some(Duration::from_secs(1)),
            },
            ..Default::default()
        });
        let pool = cfg
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| RedisStoreError::Config {
                address: address.clone(),
                message: e.to_string(),
            })?;
        let store = RedisStore {
            pool,
            prefix: config.prefix.clone(),
            address: address.clone(),
            insert: Script::new(INSERT),
            update: Script::new(UPDATE),
            remove: Script::new(REMOVE),
            list: Script::new(LIST),
            lock: Script::new(LOCK),
            unlock: Script::new(UNLOCK),
        };
        store
            .ping()
            .await
            .map_err(|source| RedisStoreError::Unreachable { address, source })?;
        Ok(store)
    }

    /// `PING`: whether Redis answers now.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run(|mut c| async move {
            redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .map(drop)
        })
        .await
    }

    fn key(&self, what: &str) -> String {
        format!("{}:{what}", self.prefix)
    }

    fn record_key(&self, id: &str) -> String {
        format!("{}:sb:{id}", self.prefix)
    }

    /// Run `op` on a pooled connection within [`OP_TIMEOUT`].
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(deadpool_redis::Connection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let work = async {
            let conn = self.pool.get().await.map_err(unavailable)?;
            op(conn).await.map_err(unavailable)
        };
        match tokio::time::timeout(OP_TIMEOUT, work).await {
            Ok(r) => r,
            Err(_) => Err(unavailable(format!(
                "{} did not answer within {} s",
                self.address,
                OP_TIMEOUT.as_secs()
            ))),
        }
    }

    /// A record from its stored version and JSON.
    fn decode(id: &str, version: u64, json: &str) -> Result<SandboxRecord, StoreError> {
        let mut r: SandboxRecord = serde_json::from_str(json)
            .map_err(|e| unavailable(format!("record {id} is not readable: {e}")))?;
        r.version = version;
        Ok(r)
    }

    fn encode(record: &SandboxRecord) -> String {
        serde_json::to_string(record).expect("a record serialises")
    }
}

fn flag(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

#[async_trait]
impl SandboxStore for RedisStore {
    async fn insert(
        &self,
        mut record: SandboxRecord,
        limit: Option<usize>,
    ) -> Result<(), StoreError> {
        record.version = 1;
        let id = record.sandbox.id.clone();
        let json = Self::encode(&record);
        let mut inv = self.insert.prepare_invoke();
        inv.key(self.record_key(&id))
            .key(self.key("index"))
            .key(self.key("live"))
            .key(self.key("seq"))
            .arg(&id)
            .arg(json)
            .arg(limit.unwrap_or(0))
            .arg(flag(record.is_live()));
        let answer: String = self
            .run(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        match answer.as_str() {
            "ok" => Ok(()),
            "exists" => Err(StoreError::Exists(id)),
            "limit" => Err(StoreError::LimitReached(limit.unwrap_or(0))),
            other => Err(unavailable(format!(
                "unexpected answer {other:?} to insert"
            ))),
        }
    }

    async fn get(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError> {
        let key = self.record_key(id);
        let (v, r): (Option<u64>, Option<String>) = self
            .run(|mut c| async move {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg("v")
                    .arg("r")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        match (v, r) {
            (Some(v), Some(r)) => Self::decode(id, v, &r).map(Some),
            _ => Ok(None),
        }
    }

    async fn update(&self, mut record: SandboxRecord) -> Result<SandboxRecord, StoreError> {
        let id = record.sandbox.id.clone();
        let expected = record.version;
        record.version = expected + 1;
        let json = Self::encode(&record);
        let mut inv = self.update.prepare_invoke();
        inv.key(self.record_key(&id))
            .key(self.key("live"))
            .arg(&id)
            .arg(json)
            .arg(expected)
            .arg(flag(record.is_live()));
        let answer: String = self
            .run(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        match answer.as_str() {
            "ok" => Ok(record),
            "notfound" => Err(StoreError::NotFound(id)),
            "conflict" => Err(StoreError::Conflict(id)),
            other => Err(unavailable(format!(
                "unexpected answer {other:?} to update"
            ))),
        }
    }

    async fn remove(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError> {
        let mut inv = self.remove.prepare_invoke();
        inv.key(self.record_key(id))
            .key(self.key("index"))
            .key(self.key("live"))
            .arg(id);
        let answer: Vec<String> = self
            .run(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        match answer.as_slice() {
            [v, r] => {
                let v = v
                    .parse()
                    .map_err(|e| unavailable(format!("version of {id}: {e}")))?;
                Self::decode(id, v, r).map(Some)
            }
            _ => Ok(None),
        }
    }

    async fn list(&self) -> Result<Vec<SandboxRecord>, StoreError> {
        let mut inv = self.list.prepare_invoke();
        inv.key(self.key("index")).arg(self.record_key(""));
        let flat: Vec<String> = self
            .run(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        flat.chunks(2)
            .map(|pair| {
                let v = pair[0]
                    .parse()
                    .map_err(|e| unavailable(format!("a record's version: {e}")))?;
                Self::decode("(listed)", v, &pair[1])
            })
            .collect()
    }

    async fn try_lock(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut inv = self.lock.prepare_invoke();
        inv.key(self.key(&format!("lock:{name}")))
            .arg(holder)
            .arg(ttl.as_millis().max(1) as u64);
        let taken: i64 = self
            .run(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(taken == 1)
    }

    async fn lock_holder(&self, name: &str) -> Result<Option<String>, StoreError> {
        let key = self.key(&format!("lock:{name}"));
        self.run(|mut c| async move {
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<String>>(&mut c)
                .await
        })
        .await
    }

    async fn unlock(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let mut inv = self.unlock.prepare_invoke();
        inv.key(self.key(&format!("lock:{name}"))).arg(holder);
        let _: i64 = self
            .run(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(())
    }
}
