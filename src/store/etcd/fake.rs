//! An in-memory etcd for unit tests: the JSON gateway calls [`super::Etcd`] makes
//! (range, put, delete, the create-if-absent transaction, leases), answered with etcd's
//! semantics (one revision counter, create and mod revisions, keys that go with their lease,
//! a put on an unknown lease refused) so that fleet coordination (locks, intents, order
//! records, takeover after a node's death) is tested in milliseconds. Time does not pass here:
//! a lease ends when the test says so ([`FakeCluster::expire`]), as a dead node's lease would.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use serde_json::{json, Value};

use super::{b64, int, unb64 as bytes, EtcdError};

#[derive(Debug, Clone)]
struct Entry {
    value: Vec<u8>,
    create_revision: i64,
    mod_revision: i64,
    lease: i64,
}

#[derive(Debug, Default)]
struct State {
    revision: i64,
    next_lease: i64,
    kvs: BTreeMap<Vec<u8>, Entry>,
    leases: BTreeSet<i64>,
}

/// One fake cluster; clients made with [`super::Etcd::fake`] share it.
#[derive(Debug, Default)]
pub struct FakeCluster {
    state: Mutex<State>,
}

fn refused(call: &str, message: &str) -> EtcdError {
    EtcdError::Refused {
        endpoint: "fake".into(),
        call: call.into(),
        message: message.into(),
    }
}

impl State {
    /// The keys a request's `key` and `range_end` name.
    fn range(&self, req: &Value) -> Vec<Vec<u8>> {
        let key = bytes(&req["key"]);
        match req.get("range_end").map(bytes) {
            None => self
                .kvs
                .contains_key(&key)
                .then_some(key)
                .into_iter()
                .collect(),
            Some(end) => self
                .kvs
                .range(key..)
                .take_while(|(k, _)| end == [0] || **k < end)
                .map(|(k, _)| k.clone())
                .collect(),
        }
    }

    fn kv_json(&self, key: &[u8]) -> Value {
        let e = &self.kvs[key];
        json!({
            "key": b64(key),
            "value": b64(&e.value),
            "create_revision": e.create_revision.to_string(),
            "mod_revision": e.mod_revision.to_string(),
            "lease": e.lease.to_string(),
        })
    }

    fn get(&self, req: &Value) -> Value {
        let kvs: Vec<Value> = self.range(req).iter().map(|k| self.kv_json(k)).collect();
        json!({"header": {"revision": self.revision.to_string()}, "count": kvs.len().to_string(), "kvs": kvs})
    }

    fn put(&mut self, req: &Value) -> Result<Value, EtcdError> {
        let lease = int(&req["lease"]);
        if lease != 0 && !self.leases.contains(&lease) {
            return Err(refused(
                "/v3/kv/put",
                "etcdserver: requested lease not found",
            ));
        }
        self.revision += 1;
        let key = bytes(&req["key"]);
        let create_revision = self
            .kvs
            .get(&key)
            .map_or(self.revision, |e| e.create_revision);
        self.kvs.insert(
            key,
            Entry {
                value: bytes(&req["value"]),
                create_revision,
                mod_revision: self.revision,
                lease,
            },
        );
        Ok(json!({"header": {"revision": self.revision.to_string()}}))
    }

    fn delete(&mut self, req: &Value) -> Value {
        let keys = self.range(req);
        if !keys.is_empty() {
            self.revision += 1;
        }
        for k in &keys {
            self.kvs.remove(k);
        }
        json!({"deleted": keys.len().to_string()})
    }

    /// Only the comparison acme-nginx makes: the key's create revision against a number.
    fn txn(&mut self, req: &Value) -> Result<Value, EtcdError> {
        let holds = req["compare"].as_array().into_iter().flatten().all(|c| {
            let key = bytes(&c["key"]);
            let have = self.kvs.get(&key).map_or(0, |e| e.create_revision);
            c["target"] == "CREATE" && c["result"] == "EQUAL" && have == int(&c["create_revision"])
        });
        let branch = if holds { "success" } else { "failure" };
        let mut responses = Vec::new();
        for op in req[branch].as_array().into_iter().flatten() {
            if let Some(put) = op.get("request_put") {
                self.put(put)?;
                responses.push(json!({"response_put": {}}));
            } else if let Some(range) = op.get("request_range") {
                responses.push(json!({"response_range": self.get(range)}));
            } else {
                return Err(refused("/v3/kv/txn", "the fake knows put and range only"));
            }
        }
        Ok(json!({"succeeded": holds, "responses": responses}))
    }

    /// Ends a lease and deletes its keys.
    fn end_lease(&mut self, lease: i64) -> bool {
        if !self.leases.remove(&lease) {
            return false;
        }
        let before = self.kvs.len();
        self.kvs.retain(|_, e| e.lease != lease);
        if self.kvs.len() != before {
            self.revision += 1;
        }
        true
    }
}

impl FakeCluster {
    /// Answers one gateway call as a member with quorum would.
    pub fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match path {
            "/v3/kv/range" => Ok(s.get(body)),
            "/v3/kv/put" => s.put(body),
            "/v3/kv/deleterange" => Ok(s.delete(body)),
            "/v3/kv/txn" => s.txn(body),
            "/v3/lease/grant" => {
                s.next_lease += 1;
                let id = s.next_lease;
                s.leases.insert(id);
                Ok(json!({"ID": id.to_string(), "TTL": body["TTL"].clone()}))
            }
            "/v3/lease/keepalive" => {
                let id = int(&body["ID"]);
                let ttl = if s.leases.contains(&id) { "10" } else { "0" };
                Ok(json!({"result": {"ID": id.to_string(), "TTL": ttl}}))
            }
            "/v3/lease/revoke" => {
                if s.end_lease(int(&body["ID"])) {
                    Ok(json!({}))
                } else {
                    Err(refused(path, "etcdserver: requested lease not found"))
                }
            }
            _ => Err(refused(path, "not a call the fake knows")),
        }
    }

    /// Lets a lease run out (a node that died stopped renewing it): its keys go.
    pub fn expire(&self, lease: i64) {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .end_lease(lease);
    }
}
