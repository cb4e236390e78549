//! OIDs of the built-in types that [`crate::convert`] understands (from `pg_type.dat`).

/// `bool`
pub const BOOL: u32 = 16;
/// `bytea`
pub const BYTEA: u32 = 17;
/// `name`
pub const NAME: u32 = 19;
/// `int8` / `bigint`
pub const INT8: u32 = 20;
/// `int2` / `smallint`
pub const INT2: u32 = 21;
/// `int4` / `integer`
pub const INT4: u32 = 23;
/// `text`
pub const TEXT: u32 = 25;
/// `json`
pub const JSON: u32 = 114;
/// `float4` / `real`
pub const FLOAT4: u32 = 700;
/// `float8` / `double precision`
pub const FLOAT8: u32 = 701;
/// `bpchar` / `character(n)`
pub const BPCHAR: u32 = 1042;
/// `varchar` / `character varying(n)`
pub const VARCHAR: u32 = 1043;
/// `date`
pub const DATE: u32 = 1082;
/// `timestamp` (without time zone)
pub const TIMESTAMP: u32 = 1114;
/// `timestamptz` / `timestamp with time zone`
pub const TIMESTAMPTZ: u32 = 1184;
/// `numeric` / `decimal`
pub const NUMERIC: u32 = 1700;
/// `uuid`
pub const UUID: u32 = 2950;
/// `jsonb`
pub const JSONB: u32 = 3802;
