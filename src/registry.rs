//! The kinds a fleet process knows: each kind's resolved settings (code defaults with config
//! overrides on top) and its type-erased handler.

use std::{collections::BTreeMap, collections::HashMap, sync::Arc};

use jobs::{BoxFuture, BudgetDefaults, Job, JobContext, JobError, KindDefaults, NewJob, Registrar};
use serde_json::Value;

use crate::config::{BudgetOverride, ConfigError, KindOverride};

/// A kind's settings after config overrides.
pub type KindSettings = KindDefaults;

/// A handler that decodes args and returns the attempt's future, or why the args are bad.
pub(crate) type ErasedHandler = Arc<
    dyn Fn(Value, JobContext) -> Result<BoxFuture<'static, Result<(), JobError>>, String>
        + Send
        + Sync,
>;

/// Checks that JSON args deserialize into a kind's args type; `Err` says why (values redacted).
pub(crate) type ArgsCheck = fn(&Value) -> Result<(), String>;

/// One registered kind.
#[derive(Clone)]
pub struct RegisteredKind {
    /// Resolved settings.
    pub settings: KindSettings,
    /// `None` for an external kind ([`Registry::declare_external`]): its jobs run elsewhere.
    handler: Option<ErasedHandler>,
    check_args: ArgsCheck,
}

impl RegisteredKind {
    /// Decodes `args` and starts the handler; `Err` is a payload that does not fit the kind.
    /// `None` for an external kind, which this process never runs.
    pub fn start(
        &self,
        args: Value,
        ctx: JobContext,
    ) -> Option<Result<BoxFuture<'static, Result<(), JobError>>, String>> {
        self.handler.as_ref().map(|h| h(args, ctx))
    }

    /// Whether this process's workers run the kind's jobs (false for an external kind).
    pub fn runs_here(&self) -> bool {
        self.handler.is_some()
    }
}

/// Why the registry refuses a job ([`Registry::check`]); neither quotes an arg value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    /// No kind of that name is registered here.
    #[error("unknown job kind {kind:?} (known: {})", known.join(", "))]
    UnknownKind {
        /// The kind asked for.
        kind: String,
        /// The kinds registered here.
        known: Vec<String>,
    },
    /// The args do not deserialize into the kind's type (the message names the kind).
    #[error("{0}")]
    BadArgs(String),
}

/// The kinds this process runs, with their settings.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: HashMap<String, RegisteredKind>,
    overrides: BTreeMap<String, KindOverride>,
    /// Declared rate budgets, config applied.
    budgets: BTreeMap<String, BudgetDefaults>,
    budget_overrides: BTreeMap<String, BudgetOverride>,
}

/// A rate budget as the claim spends it.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetSpec {
    /// Its name (the `fleet_budgets` row).
    pub name: String,
    /// Tokens per second.
    pub per_second: f64,
    /// Bucket size.
    pub burst: f64,
}

impl Registry {
    /// An empty registry applying `overrides` (from `[kinds.*]` config) to what registers.
    pub fn new(overrides: BTreeMap<String, KindOverride>) -> Self {
        Self {
            kinds: HashMap::new(),
            overrides,
            budgets: BTreeMap::new(),
            budget_overrides: BTreeMap::new(),
        }
    }

    /// Applies `[budgets.*]` config: to the budgets code declares (now and later), and a budget
    /// of config's own where both `rate` and `burst` are given.
    pub fn with_budget_overrides(mut self, overrides: BTreeMap<String, BudgetOverride>) -> Self {
        for (name, o) in &overrides {
            if let (Some(rate), Some(burst)) = (o.rate, o.burst) {
                self.budgets.insert(
                    name.clone(),
                    BudgetDefaults {
                        per_second: rate.per_second,
                        burst,
                    },
                );
            }
        }
        self.budget_overrides = overrides;
        self
    }

    /// Declares budget `name` (code defaults, config on top). Declaring it again replaces it.
    pub fn declare_budget(&mut self, name: &str, mut d: BudgetDefaults) -> &mut Self {
        if let Some(o) = self.budget_overrides.get(name) {
            if let Some(r) = o.rate {
                d.per_second = r.per_second;
            }
            if let Some(b) = o.burst {
                d.burst = b;
            }
        }
        self.budgets.insert(name.to_owned(), d);
        self
    }

    /// A declared budget's settings.
    pub fn budget_spec(&self, name: &str) -> Option<BudgetSpec> {
        self.budgets.get(name).map(|d| BudgetSpec {
            name: name.to_owned(),
            per_second: d.per_second,
            burst: f64::from(d.burst),
        })
    }

    /// Every declared budget, by name.
    pub fn budgets(&self) -> Vec<BudgetSpec> {
        self.budgets
            .keys()
            .filter_map(|n| self.budget_spec(n))
            .collect()
    }

    /// The kinds claimed under a fleet-wide limit, budget or fairness key (see
    /// [`KindDefaults::is_limited`]), sorted.
    pub fn limited_kinds(&self) -> Vec<String> {
        self.kind_names()
            .into_iter()
            .filter(|k| self.kinds[k].settings.is_limited())
            .collect()
    }

    /// The budgets kind `kind` spends, declared ones only. An undeclared name is refused by
    /// [`Registry::check_overrides`], which every `fleet` process runs; a registry built in
    /// code without it (tests, benches) spends only what it declared.
    pub fn budgets_of(&self, kind: &str) -> Vec<BudgetSpec> {
        let Some(k) = self.kinds.get(kind) else {
            return Vec::new();
        };
        let mut v: Vec<BudgetSpec> = k
            .settings
            .budgets
            .iter()
            .filter_map(|n| self.budget_spec(n))
            .collect();
        // Locked in name order by every claim: no two claims wait on each other's rows.
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v.dedup_by(|a, b| a.name == b.name);
        v
    }

    /// Registers kind `J`. Panics if the kind name is registered twice (a programming error).
    pub fn register<J: Job>(&mut self) -> &mut Self {
        self.register_with::<J>(J::defaults())
    }

    /// Registers kind `J` with explicit defaults instead of `J::defaults()` (tests, benches).
    pub fn register_with<J: Job>(&mut self, defaults: KindDefaults) -> &mut Self {
        let handler: ErasedHandler = Arc::new(|args: Value, ctx: JobContext| {
            let job: J = decode::<J>(args)?;
            Ok(Box::pin(job.run(ctx)) as BoxFuture<'static, Result<(), JobError>>)
        });
        self.insert(J::KIND, defaults, Some(handler), |args| {
            decode::<J>(args.clone()).map(drop)
        })
    }

    /// Declares kind `kind` as **external**: its jobs are run outside this process's workers
    /// (by an apalis worker on the fleet's queue, `fleet::apalis`). This process enqueues,
    /// inspects, pauses and drains them like any other, under `defaults` with the `[kinds.*]`
    /// overrides on top, and its [`crate::Worker`] never claims them (an undeclared kind would
    /// be claimed and made dead as unknown, decision 7). Any JSON args are accepted here: the
    /// worker that runs the kind checks them. Panics if the name is registered twice.
    pub fn declare_external(&mut self, kind: &str, defaults: KindDefaults) -> &mut Self {
        self.insert(kind, defaults, None, |_| Ok(()))
    }

    /// Registers kind `kind` with a handler built at run time (the apalis backend's bridge),
    /// `check_args` saying whether args fit it.
    #[cfg_attr(not(feature = "apalis"), allow(dead_code))]
    pub(crate) fn register_erased(
        &mut self,
        kind: &str,
        defaults: KindDefaults,
        handler: ErasedHandler,
        check_args: ArgsCheck,
    ) -> &mut Self {
        self.insert(kind, defaults, Some(handler), check_args)
    }

    fn insert(
        &mut self,
        kind: &str,
        defaults: KindDefaults,
        handler: Option<ErasedHandler>,
        check_args: ArgsCheck,
    ) -> &mut Self {
        let settings = apply(defaults, self.overrides.get(kind));
        let prev = self.kinds.insert(
            kind.to_owned(),
            RegisteredKind {
                settings,
                handler,
                check_args,
            },
        );
        assert!(prev.is_none(), "job kind {kind:?} registered twice");
        self
    }

    /// The kinds declared external ([`Registry::declare_external`]), sorted.
    pub fn external_kinds(&self) -> Vec<String> {
        self.kind_names()
            .into_iter()
            .filter(|k| !self.kinds[k].runs_here())
            .collect()
    }

    /// Whether `job` can be enqueued as given: its kind is registered here and its args fit
    /// the kind's type (checked only for [`NewJob::raw`] jobs: typed ones fit by
    /// construction). `Err` names the problem without quoting arg values.
    pub fn check(&self, job: &NewJob) -> Result<(), Refused> {
        self.check_parts(&job.kind, &job.args, job.is_typed())
    }

    /// [`Registry::check`] on a job's parts: `typed` args fit by construction.
    pub fn check_parts(&self, kind: &str, args: &Value, typed: bool) -> Result<(), Refused> {
        let Some(k) = self.kinds.get(kind) else {
            return Err(Refused::UnknownKind {
                kind: kind.to_owned(),
                known: self.kind_names(),
            });
        };
        if typed {
            return Ok(());
        }
        (k.check_args)(args).map_err(Refused::BadArgs)
    }

    /// The value kind `kind`'s per-key limit and fairness count `args` by: its `limit_key`
    /// field, as text (`None` when the kind has no key or the field is absent or null).
    pub fn limit_key_of(&self, kind: &str, args: &Value) -> Option<String> {
        let field = self.kinds.get(kind)?.settings.limit_key.as_deref()?;
        match args.get(field)? {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            v => Some(v.to_string()),
        }
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
                return Err(ConfigError::new(
                    format!("kinds.{kind}"),
                    format!(
                        "kinds.{kind:?} overrides an unknown job kind (known: {})",
                        self.kind_names().join(", ")
                    ),
                ));
            }
        }
        let known = || {
            let v: Vec<&str> = self.budgets.keys().map(String::as_str).collect();
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(", ")
            }
        };
        for (name, o) in &self.budget_overrides {
            if !self.budgets.contains_key(name) {
                let missing = if o.rate.is_none() { "rate" } else { "burst" };
                return Err(ConfigError::new(format!("budgets.{name}"), format!(
                    "budgets.{name} is not a budget the code declares (known: {}), so it needs both \
                     rate and burst; `{missing}` is missing",
                    known()
                )));
            }
        }
        for kind in self.kind_names() {
            for b in &self.kinds[&kind].settings.budgets {
                if !self.budgets.contains_key(b) {
                    return Err(ConfigError::new(format!("kinds.{kind}.budgets"), format!(
                        "kinds.{kind}.budgets names an unknown budget {b:?} (known: {}); declare it \
                         with [budgets.{b}] rate and burst",
                        known()
                    )));
                }
            }
        }
        Ok(())
    }
}

impl Registrar for Registry {
    fn register<J: Job>(&mut self) -> &mut Self {
        Registry::register::<J>(self)
    }

    fn budget(&mut self, name: &str, defaults: BudgetDefaults) -> &mut Self {
        self.declare_budget(name, defaults)
    }
}

/// Decodes a payload into `J`'s args; the error names the kind and redacts quoted values.
fn decode<J: Job>(args: Value) -> Result<J, String> {
    decode_as(J::KIND, args)
}

/// Args of kind `kind` as `T`; `Err` says why without quoting a value of the payload.
pub(crate) fn decode_as<T: serde::de::DeserializeOwned>(
    kind: &str,
    args: Value,
) -> Result<T, String> {
    serde_json::from_value(args).map_err(|e| {
        format!(
            "payload does not match the args of kind {kind:?}: {}",
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
    if o.global_concurrency.is_some() {
        d.global_concurrency = o.global_concurrency;
    }
    if o.key_concurrency.is_some() {
        d.key_concurrency = o.key_concurrency;
    }
    if o.limit_key.is_some() {
        d.limit_key = o.limit_key.clone();
    }
    if let Some(v) = &o.budgets {
        d.budgets = v.clone();
    }
    d
}

/// Replaces quoted values in a serde error message: a payload's values stay out of error
/// texts even if a caller put something sensitive where an id belongs.
pub(crate) fn redact_quoted(msg: &str) -> String {
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
