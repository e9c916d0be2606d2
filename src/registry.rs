//! The kinds a fleet process knows: each kind's resolved settings (code defaults with config
//! overrides on top) and its type-erased handler.

use std::{collections::BTreeMap, collections::HashMap, sync::Arc};

use jobs::{BoxFuture, Job, JobContext, JobError, KindDefaults, NewJob, Registrar};
use serde_json::Value;

use crate::config::{ConfigError, KindOverride};

/// A kind's settings after config overrides.
pub type KindSettings = KindDefaults;

/// A handler that decodes args and returns the attempt's future, or why the args are bad.
type ErasedHandler = Arc<
    dyn Fn(Value, JobContext) -> Result<BoxFuture<'static, Result<(), JobError>>, String>
        + Send
        + Sync,
>;

/// Checks that JSON args deserialize into a kind's args type; `Err` says why (values redacted).
type ArgsCheck = fn(&Value) -> Result<(), String>;

/// One registered kind.
#[derive(Clone)]
pub struct RegisteredKind {
    /// Resolved settings.
    pub settings: KindSettings,
    handler: ErasedHandler,
    check_args: ArgsCheck,
}

impl RegisteredKind {
    /// Decodes `args` and starts the handler; `Err` is a payload that does not fit the kind.
    pub fn start(
        &self,
        args: Value,
        ctx: JobContext,
    ) -> Result<BoxFuture<'static, Result<(), JobError>>, String> {
        (self.handler)(args, ctx)
    }
}

/// The kinds this process runs, with their settings.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: HashMap<String, RegisteredKind>,
    overrides: BTreeMap<String, KindOverride>,
}

impl Registry {
    /// An empty registry applying `overrides` (from `[kinds.*]` config) to what registers.
    pub fn new(overrides: BTreeMap<String, KindOverride>) -> Self {
        Self {
            kinds: HashMap::new(),
            overrides,
        }
    }

    /// Registers kind `J`. Panics if the kind name is registered twice (a programming error).
    pub fn register<J: Job>(&mut self) -> &mut Self {
        self.register_with::<J>(J::defaults())
    }

    /// Registers kind `J` with explicit defaults instead of `J::defaults()` (tests, benches).
    pub fn register_with<J: Job>(&mut self, defaults: KindDefaults) -> &mut Self {
        let settings = apply(defaults, self.overrides.get(J::KIND));
        let handler: ErasedHandler = Arc::new(|args: Value, ctx: JobContext| {
            let job: J = decode::<J>(args)?;
            Ok(Box::pin(job.run(ctx)) as BoxFuture<'static, Result<(), JobError>>)
        });
        let check_args: ArgsCheck = |args| decode::<J>(args.clone()).map(drop);
        let prev = self.kinds.insert(
            J::KIND.to_owned(),
            RegisteredKind {
                settings,
                handler,
                check_args,
            },
        );
        assert!(prev.is_none(), "job kind {:?} registered twice", J::KIND);
        self
    }

    /// Whether `job` can be enqueued as given: its kind is registered here and its args fit
    /// the kind's type (checked only for [`NewJob::raw`] jobs: typed ones fit by
    /// construction). `Err` names the problem without quoting arg values.
    pub fn check(&self, job: &NewJob) -> Result<(), String> {
        self.check_parts(&job.kind, &job.args, job.is_typed())
    }

    /// [`Registry::check`] on a job's parts: `typed` args fit by construction.
    pub fn check_parts(&self, kind: &str, args: &Value, typed: bool) -> Result<(), String> {
        let Some(k) = self.kinds.get(kind) else {
            return Err(format!(
                "unknown job kind {kind:?} (known: {})",
                self.kind_names().join(", ")
            ));
        };
        if typed {
            return Ok(());
        }
        (k.check_args)(args)
    }

    /// The kind, if registered.
    pub fn get(&self, kind: &str) -> Option<&RegisteredKind> {
        self.kinds.get(kind)
    }

    /// Settings of a registered kind.
    pub fn settings(&self, kind: &str) -> Option<&KindSettings> {
        self.kinds.get(kind).map(|k| &k.settings)
    }

    /// The queues the registered kinds are enqueued on, sorted, each once.
    pub fn queues(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .kinds
            .values()
            .map(|k| k.settings.queue.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Registered kind names, sorted.
    pub fn kind_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.kinds.keys().cloned().collect();
        v.sort();
        v
    }

    /// Fails if config overrides a kind that no code registered (a typo would otherwise be
    /// silently ignored).
    pub fn check_overrides(&self) -> Result<(), ConfigError> {
        for kind in self.overrides.keys() {
            if !self.kinds.contains_key(kind) {
                return Err(ConfigError(format!(
                    "kinds.{kind:?} overrides an unknown job kind (known: {})",
                    self.kind_names().join(", ")
                )));
            }
        }
        Ok(())
    }
}

impl Registrar for Registry {
    fn register<J: Job>(&mut self) -> &mut Self {
        Registry::register::<J>(self)
    }
}

/// Decodes a payload into `J`'s args; the error names the kind and redacts quoted values.
fn decode<J: Job>(args: Value) -> Result<J, String> {
    serde_json::from_value(args).map_err(|e| {
        format!(
            "payload does not match the args of kind {:?}: {}",
            J::KIND,
            redact_quoted(&e.to_string())
        )
    })
}

fn apply(mut d: KindDefaults, o: Option<&KindOverride>) -> KindDefaults {
    let Some(o) = o else { return d };
    if let Some(v) = &o.queue {
        d.queue = v.clone();
    }
    if o.concurrency.is_some() {
        d.concurrency = o.concurrency;
    }
    if let Some(v) = o.max_attempts {
        d.max_attempts = v;
    }
    if let Some(v) = o.backoff_base {
        d.backoff_base = v;
    }
    if let Some(v) = o.backoff_cap {
        d.backoff_cap = v;
    }
    if let Some(v) = o.timeout {
        d.timeout = v;
    }
    if let Some(v) = o.idempotency_window {
        d.idempotency_window = v;
    }
    if let Some(v) = o.priority {
        d.priority = v;
    }
    d
}

/// Replaces quoted values in a serde error message: a payload's values stay out of error
/// texts even if a caller put something sensitive where an id belongs.
fn redact_quoted(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut in_quotes = false;
    for c in msg.chars() {
        if c == '"' {
            if in_quotes {
                out.push_str("\"…\"");
            }
            in_quotes = !in_quotes;
        } else if !in_quotes {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_quoted_hides_values_but_keeps_field_names() {
        let m = redact_quoted(r#"invalid type: string "P1234567", expected u64 at line 1"#);
        assert!(!m.contains("P1234567"));
        assert!(m.contains("expected u64"));
        assert_eq!(redact_quoted("missing field `n`"), "missing field `n`");
    }
}
