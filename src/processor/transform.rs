//! Field transforms applied while mapping: the built-in ones and `custom`
//! JavaScript functions, compiled once per pipeline into a sandboxed QuickJS
//! runtime (memory and time limits, no I/O: only the language's intrinsics).
//!
//! ```text
//!  billing value ──forward──► external value      (number_to_currency, date_to_iso, …, custom)
//!  external value ──reverse──► billing value
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use rquickjs::{CatchResultExt, Context, Function, Runtime};
use serde_json::{Map, Value};

use crate::config::Transform;

/// Memory a custom transform's runtime may use.
pub const JS_MEMORY_LIMIT: usize = 16 * 1024 * 1024;
/// Time one custom transform call may take.
pub const JS_TIME_LIMIT: Duration = Duration::from_millis(50);

/// A transform that could not produce a value: a `field_validation` error for
/// that record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{transform}: {message}")]
pub struct TransformError {
    pub transform: &'static str,
    pub message: String,
}

fn err(transform: &'static str, message: impl Into<String>) -> TransformError {
    TransformError {
        transform,
        message: message.into(),
    }
}

/// Applies a built-in transform from the billing value to the external one.
pub fn forward(transform: Transform, value: &Value) -> Result<Value, TransformError> {
    if value.is_null() {
        return Ok(Value::Null);
    }
    match transform {
        Transform::None | Transform::Custom => Ok(value.clone()),
        Transform::NumberToCurrency => {
            let n = as_number(value).ok_or_else(|| {
                err(
                    "number_to_currency",
                    format!("expected a number, got {}", kind(value)),
                )
            })?;
            let cents = (n * 100.0).round() / 100.0;
            Ok(serde_json::Number::from_f64(cents)
                .map(Value::Number)
                .unwrap_or(Value::Null))
        }
        Transform::DateToIso => to_iso(value).ok_or_else(|| {
            err(
                "date_to_iso",
                format!("expected a date, got {}", kind(value)),
            )
        }),
        Transform::BooleanToString => match value {
            Value::Bool(b) => Ok(Value::String(b.to_string())),
            other => Err(err(
                "boolean_to_string",
                format!("expected a boolean, got {}", kind(other)),
            )),
        },
    }
}

/// Turns an external value back into the billing representation.
pub fn reverse(transform: Transform, value: &Value) -> Result<Value, TransformError> {
    if value.is_null() {
        return Ok(Value::Null);
    }
    match transform {
        Transform::None | Transform::Custom | Transform::DateToIso => Ok(value.clone()),
        Transform::NumberToCurrency => {
            let n = as_number(value).ok_or_else(|| {
                err(
                    "number_to_currency",
                    format!("expected a number, got {}", kind(value)),
                )
            })?;
            Ok(Value::String(format!("{n:.2}")))
        }
        Transform::BooleanToString => match value {
            Value::Bool(b) => Ok(Value::Bool(*b)),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" => Ok(Value::Bool(true)),
                "false" | "no" | "0" | "" => Ok(Value::Bool(false)),
                _ => Err(err("boolean_to_string", format!("{s:?} is not a boolean"))),
            },
            other => Err(err(
                "boolean_to_string",
                format!("expected a string, got {}", kind(other)),
            )),
        },
    }
}

fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn to_iso(v: &Value) -> Option<Value> {
    match v {
        Value::Number(n) => {
            let ms = n.as_i64()?;
            let t = Utc.timestamp_millis_opt(ms).single()?;
            Some(Value::String(
                t.to_rfc3339_opts(SecondsFormat::Millis, true),
            ))
        }
        Value::String(s) => {
            let s = s.trim();
            if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
                return Some(Value::String(d.format("%Y-%m-%d").to_string()));
            }
            if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                return Some(Value::String(
                    t.with_timezone(&Utc)
                        .to_rfc3339_opts(SecondsFormat::Millis, true),
                ));
            }
            for fmt in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%#z"] {
                if let Ok(t) = DateTime::parse_from_str(s, fmt) {
                    return Some(Value::String(
                        t.with_timezone(&Utc)
                            .to_rfc3339_opts(SecondsFormat::Millis, true),
                    ));
                }
            }
            for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
                if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
                    return Some(Value::String(
                        t.and_utc().to_rfc3339_opts(SecondsFormat::Millis, true),
                    ));
                }
            }
            None
        }
        _ => None,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Compile error of a custom function, reported when the pipeline starts.
#[derive(Debug, Clone, thiserror::Error)]
#[error("custom transform does not compile: {0}")]
pub struct CompileError(pub String);

/// Global (frozen, non-writable) array holding the compiled functions.
const FUNCTIONS_GLOBAL: &str = "__extsyncTransforms";

/// The custom JavaScript functions of one pipeline, compiled once. They live
/// in a frozen array in the context, so every use goes through the runtime's
/// lock and the engine can be shared between threads.
pub struct CustomTransforms {
    // Fields drop in order: the context before the runtime.
    context: Context,
    _runtime: Runtime,
    count: usize,
    deadline: Arc<AtomicU64>,
    epoch: Instant,
}

impl CustomTransforms {
    /// Compiles each body as `function (value, record) { <body> }`, in
    /// input order; function `i` is called with [`CustomTransforms::call`].
    pub fn compile<'a>(bodies: impl IntoIterator<Item = &'a str>) -> Result<Self, CompileError> {
        let runtime = Runtime::new().map_err(|e| CompileError(e.to_string()))?;
        runtime.set_memory_limit(JS_MEMORY_LIMIT);
        runtime.set_max_stack_size(256 * 1024);
        let epoch = Instant::now();
        let deadline = Arc::new(AtomicU64::new(u64::MAX));
        let watch = deadline.clone();
        runtime.set_interrupt_handler(Some(Box::new(move || {
            epoch.elapsed().as_nanos() as u64 > watch.load(Ordering::Relaxed)
        })));
        let context = Context::full(&runtime).map_err(|e| CompileError(e.to_string()))?;
        let mut count = 0;
        context.with(|ctx| {
            let list = rquickjs::Array::new(ctx.clone()).map_err(|e| CompileError(e.to_string()))?;
            for body in bodies {
                let source = format!("(function (value, record) {{ 'use strict';\n{body}\n}})");
                let f: Function = ctx.eval(source).catch(&ctx).map_err(|e| CompileError(e.to_string()))?;
                list.set(count, f).map_err(|e| CompileError(e.to_string()))?;
                count += 1;
            }
            ctx.globals().set(FUNCTIONS_GLOBAL, list).map_err(|e| CompileError(e.to_string()))?;
            let _: rquickjs::Value = ctx
                .eval(format!(
                    "Object.defineProperty(globalThis, '{FUNCTIONS_GLOBAL}', {{ value: Object.freeze(globalThis.{FUNCTIONS_GLOBAL}), writable: false, configurable: false }});"
                ))
                .catch(&ctx)
                .map_err(|e| CompileError(e.to_string()))?;
            Ok::<_, CompileError>(())
        })?;
        Ok(Self {
            context,
            _runtime: runtime,
            count,
            deadline,
            epoch,
        })
    }

    /// Calls function `index` with the value and the whole source record.
    pub fn call(
        &self,
        index: usize,
        value: &Value,
        record: &Map<String, Value>,
    ) -> Result<Value, TransformError> {
        if index >= self.count {
            return Err(err("custom", "no such function"));
        }
        let value_json = value.to_string();
        let record_json = serde_json::to_string(record).expect("JSON serializes");
        let limit = (self.epoch.elapsed() + JS_TIME_LIMIT).as_nanos() as u64;
        self.deadline.store(limit, Ordering::Relaxed);
        let out = self.context.with(|ctx| {
            let run = || -> rquickjs::Result<Option<String>> {
                let list: rquickjs::Array = ctx.globals().get(FUNCTIONS_GLOBAL)?;
                let f: Function = list.get(index)?;
                let v = ctx.json_parse(value_json)?;
                let r = ctx.json_parse(record_json)?;
                let out: rquickjs::Value = f.call((v, r))?;
                if out.is_undefined() {
                    return Ok(None);
                }
                ctx.json_stringify(out)?.map(|s| s.to_string()).transpose()
            };
            run().catch(&ctx).map_err(|e| e.to_string())
        });
        self.deadline.store(u64::MAX, Ordering::Relaxed);
        let timed_out = self.epoch.elapsed().as_nanos() as u64 > limit;
        match out {
            Ok(Some(json)) => serde_json::from_str(&json).map_err(|e| err("custom", e.to_string())),
            Ok(None) => Ok(Value::Null),
            Err(_) if timed_out => Err(err(
                "custom",
                format!("exceeded the time limit of {JS_TIME_LIMIT:?}"),
            )),
            Err(e) => Err(err("custom", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builtins_forward_and_back() {
        assert_eq!(
            forward(Transform::NumberToCurrency, &json!("1250.005")).unwrap(),
            json!(1250.01)
        );
        assert_eq!(
            reverse(Transform::NumberToCurrency, &json!(480.5)).unwrap(),
            json!("480.50")
        );
        assert_eq!(
            forward(Transform::BooleanToString, &json!(true)).unwrap(),
            json!("true")
        );
        assert_eq!(
            reverse(Transform::BooleanToString, &json!("false")).unwrap(),
            json!(false)
        );
        assert_eq!(
            forward(Transform::DateToIso, &json!("2024-03-01")).unwrap(),
            json!("2024-03-01")
        );
        assert_eq!(
            forward(Transform::DateToIso, &json!("2024-03-01 10:00:00+02")).unwrap(),
            json!("2024-03-01T08:00:00.000Z")
        );
        assert_eq!(
            forward(Transform::DateToIso, &json!(0)).unwrap(),
            json!("1970-01-01T00:00:00.000Z")
        );
        assert_eq!(
            forward(Transform::NumberToCurrency, &Value::Null).unwrap(),
            Value::Null
        );
        assert!(forward(Transform::NumberToCurrency, &json!("abc")).is_err());
        assert!(forward(Transform::BooleanToString, &json!(1)).is_err());
    }

    #[test]
    fn custom_functions_see_value_and_record() {
        let js = CustomTransforms::compile([
            "return value == null ? null : value.replace(/[^0-9+]/g, '');",
            "return record.firstName + ' ' + value;",
        ])
        .unwrap();
        let rec = json!({"firstName": "Ada"}).as_object().unwrap().clone();
        assert_eq!(
            js.call(0, &json!("+1 (555) 010"), &rec).unwrap(),
            json!("+1555010")
        );
        assert_eq!(
            js.call(1, &json!("Lovelace"), &rec).unwrap(),
            json!("Ada Lovelace")
        );
    }

    #[test]
    fn failing_custom_functions_are_errors_not_crashes() {
        let js = CustomTransforms::compile([
            "throw new Error('bad value');",
            "while (true) {}",
            "let a = []; while (true) { a.push(new Array(100000).fill(1)); }",
            "return value.toUpperCase();",
        ])
        .unwrap();
        let rec = Map::new();
        let e = js.call(0, &json!(1), &rec).unwrap_err();
        assert!(e.message.contains("bad value"), "{e}");
        let started = Instant::now();
        let e = js.call(1, &json!(1), &rec).unwrap_err();
        assert!(e.message.contains("time limit"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(js.call(2, &json!(1), &rec).is_err());
        // A type error in user code; the engine still works afterwards.
        assert!(js.call(3, &json!(5), &rec).is_err());
        assert_eq!(js.call(3, &json!("ok"), &rec).unwrap(), json!("OK"));
    }

    #[test]
    fn no_io_is_available() {
        let js = CustomTransforms::compile([
            "return [typeof require, typeof fetch, typeof process, typeof std, typeof os].join(',');",
        ])
        .unwrap();
        assert_eq!(
            js.call(0, &Value::Null, &Map::new()).unwrap(),
            json!("undefined,undefined,undefined,undefined,undefined")
        );
    }

    #[test]
    fn functions_cannot_replace_each_other() {
        let js = CustomTransforms::compile([
            "globalThis.__extsyncTransforms[1] = function () { return 'hijacked'; }; return 1;",
            "return value;",
        ])
        .unwrap();
        assert!(js.call(0, &json!(1), &Map::new()).is_err());
        assert_eq!(
            js.call(1, &json!("mine"), &Map::new()).unwrap(),
            json!("mine")
        );
    }

    #[test]
    fn engine_is_shared_between_threads() {
        let js = std::sync::Arc::new(CustomTransforms::compile(["return value * 2;"]).unwrap());
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let js = js.clone();
                std::thread::spawn(move || js.call(0, &json!(i), &Map::new()).unwrap())
            })
            .collect();
        let mut got: Vec<Value> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        got.sort_by_key(|v| v.as_i64());
        assert_eq!(got, vec![json!(0), json!(2), json!(4), json!(6)]);
    }

    #[test]
    fn syntax_errors_fail_at_compile_time() {
        assert!(CustomTransforms::compile(["return (;"]).is_err());
    }
}
