//! The standard extract of `DATA-SPEC.md` as data: which files exist, their positional columns, what each column
//! holds, and the one function that checks a field and turns it into the value stored in an instance. The
//! Connector formats with [`format_field`], the App validates with [`parse_field`] — the same table drives both.

/// What a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Free text (descriptions): quoted in CSV.
    Text,
    /// An identifier (item, location, supplier, order number...): quoted in CSV.
    Code,
    /// A whole number, may be negative.
    Int,
    /// A decimal number, kept exact as text (`-1.50`, `3`).
    Dec,
    /// A date, `YYYY/MM/DD` in CSV, stored as ISO `YYYY-MM-DD`.
    Date,
    /// One of a fixed set of codes (quoted in CSV).
    OneOf(&'static [&'static str]),
    /// `1` or `0`.
    Flag,
    /// Reserved column: always written empty, ignored on import.
    Unused,
}

#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
}

/// Which codes a column must name when it is not empty: the references between the files of `DATA-SPEC.md`
/// (a sales row's item is an item of `master.csv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefTo {
    /// An item code of `master.csv`.
    Item,
    /// A location code of `location.csv`.
    Location,
    /// A supplier code of `supplier.csv`.
    Supplier,
    /// A supplier of `supplier.csv` or a location of `location.csv` (stock's supply code: supplier or supplying
    /// location).
    SupplierOrLocation,
    /// A value of custom group N (1-5) in `group.csv`.
    Group(u8),
}

impl RefTo {
    /// The files whose codes (their first key) this reference may name.
    pub fn files(self) -> &'static [&'static str] {
        match self {
            RefTo::Item => &["master.csv"],
            RefTo::Location => &["location.csv"],
            RefTo::Supplier => &["supplier.csv"],
            RefTo::SupplierOrLocation => &["supplier.csv", "location.csv"],
            RefTo::Group(_) => &["group.csv"],
        }
    }

    /// What the codes are, in words: `an item of master.csv`.
    pub fn describe(self) -> String {
        match self {
            RefTo::Item => "an item of master.csv".into(),
            RefTo::Location => "a location of location.csv".into(),
            RefTo::Supplier => "a supplier of supplier.csv".into(),
            RefTo::SupplierOrLocation => "a supplier of supplier.csv nor a location of location.csv".into(),
            RefTo::Group(n) => format!("a value of custom group {n} in group.csv"),
        }
    }
}

/// A column whose (non-empty) values must be codes that another file defines.
#[derive(Debug, Clone, Copy)]
pub struct Ref {
    pub column: &'static str,
    pub to: RefTo,
}

#[derive(Debug)]
pub struct FileSpec {
    /// File name in a batch, e.g. `stock.csv` (shipped as `stock.csv.bz2`).
    pub name: &'static str,
    /// Table in an instance database.
    pub table: &'static str,
    /// Must every full batch carry it?
    pub required: bool,
    pub columns: &'static [Column],
    /// The keys of the file: each a set of columns that no two rows may share (rows with an empty key column are
    /// not compared). The first key is also the set of codes other files refer to ([`RefTo`]). Transaction files
    /// (`sales.csv`, `pohist.csv`) have none: the same line may legitimately repeat.
    pub keys: &'static [&'static [&'static str]],
    /// Columns that must name codes of another file.
    pub refs: &'static [Ref],
}

impl FileSpec {
    pub fn stem(&self) -> &'static str {
        self.name.trim_end_matches(".csv")
    }

    /// Position (0-based) of the column called `name`.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The names of the date columns (the columns an incremental extract can window on).
    pub fn date_columns(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.columns.iter().filter(|c| c.kind == Kind::Date).map(|c| c.name)
    }
}

const fn c(name: &'static str, kind: Kind, required: bool) -> Column {
    Column { name, kind, required }
}

const fn r(column: &'static str, to: RefTo) -> Ref {
    Ref { column, to }
}

use Kind::*;

pub static LOCATION: FileSpec = FileSpec {
    name: "location.csv",
    table: "location",
    required: true,
    columns: &[
        c("location", Code, true),
        c("description", Text, false),
        c("active", Flag, false),
        c("location_group", Code, false),
        c("location_type", OneOf(&["ST", "DC", "CW"]), false),
    ],
    keys: &[&["location"]],
    refs: &[],
};

pub static MASTER: FileSpec = FileSpec {
    name: "master.csv",
    table: "master",
    required: true,
    columns: &[
        c("item", Code, true),
        c("description", Text, false),
        c("uom", Code, false),
        c("unit_volume", Dec, false),
        c("unit_weight", Dec, false),
        c("unused6", Unused, false),
        c("unused7", Unused, false),
        c("unused8", Unused, false),
        c("uid", Code, true),
    ],
    keys: &[&["item"], &["uid"]],
    refs: &[],
};

pub static STOCK: FileSpec = FileSpec {
    name: "stock.csv",
    table: "stock",
    required: true,
    columns: &[
        c("item", Code, true),
        c("location", Code, true),
        c("date_added", Date, false),
        c("inventory_cost", Dec, true),
        c("purchase_cost", Dec, true),
        c("selling_price", Dec, false),
        c("on_hand", Int, true),
        c("allocated", Dec, false),
        c("supply_type", OneOf(&["IN", "EX"]), false),
        c("supply_code", Code, false),
        c("supplier", Code, true),
        c("purchase_uom", Code, false),
        c("purchase_factor", Dec, false),
        c("lead_time_days", Dec, false),
        c("min_order_qty", Dec, false),
        c("order_multiple", Dec, false),
        c("custom1", Code, false),
        c("custom2", Code, false),
        c("custom3", Code, false),
        c("custom4", Code, false),
        c("custom5", Code, false),
    ],
    keys: &[&["item", "location"]],
    refs: &[
        r("item", RefTo::Item),
        r("location", RefTo::Location),
        r("supply_code", RefTo::SupplierOrLocation),
        r("supplier", RefTo::Supplier),
        r("custom1", RefTo::Group(1)),
        r("custom2", RefTo::Group(2)),
        r("custom3", RefTo::Group(3)),
        r("custom4", RefTo::Group(4)),
        r("custom5", RefTo::Group(5)),
    ],
};

pub static GROUP: FileSpec = FileSpec {
    name: "group.csv",
    table: "groups",
    required: false,
    columns: &[
        c("group_number", OneOf(&["1", "2", "3", "4", "5"]), true),
        c("value", Code, true),
        c("description", Text, false),
    ],
    keys: &[&["group_number", "value"]],
    refs: &[],
};

pub static SUPPLIER: FileSpec = FileSpec {
    name: "supplier.csv",
    table: "supplier",
    required: true,
    columns: &[
        c("supplier", Code, true),
        c("description", Text, false),
        c("supplier_type", OneOf(&["local", "import", "internal"]), false),
        c("lead_time_days", Dec, false),
    ],
    keys: &[&["supplier"]],
    refs: &[],
};

pub static SALES: FileSpec = FileSpec {
    name: "sales.csv",
    table: "sales",
    required: true,
    columns: &[
        c("item", Code, true),
        c("location", Code, true),
        c("customer", Code, false),
        c("order_date", Date, true),
        c("invoice_date", Date, true),
        c("qty", Dec, true),
        c("cost", Dec, false),
        c("value", Dec, false),
        c("issues_qty", Dec, false),
        c("details", Text, false),
    ],
    keys: &[],
    refs: &[r("item", RefTo::Item), r("location", RefTo::Location)],
};

pub static PO: FileSpec = FileSpec {
    name: "po.csv",
    table: "po",
    required: true,
    columns: &[
        c("item", Code, true),
        c("location", Code, true),
        c("supplier", Code, true),
        c("order_number", Code, true),
        c("line", Code, true),
        c("order_date", Date, false),
        c("order_qty", Dec, false),
        c("expected_date", Date, true),
        c("outstanding_qty", Dec, true),
        c("order_type", OneOf(&["P", "M"]), false),
        c("unit_cost", Dec, false),
    ],
    keys: &[&["order_number", "line"]],
    refs: &[r("item", RefTo::Item), r("location", RefTo::Location), r("supplier", RefTo::Supplier)],
};

pub static POHIST: FileSpec = FileSpec {
    name: "pohist.csv",
    table: "pohist",
    required: false,
    columns: &[
        c("item", Code, false),
        c("location", Code, false),
        c("supplier", Code, false),
        c("order_number", Code, false),
        c("line", Code, false),
        c("order_date", Date, false),
        c("order_qty", Dec, false),
        c("expected_date", Date, false),
        c("urgency", OneOf(&["ST", "EM"]), false),
        c("received_qty", Dec, false),
        c("receipt_date", Date, false),
        c("unit_cost", Dec, false),
    ],
    keys: &[],
    refs: &[r("item", RefTo::Item), r("location", RefTo::Location), r("supplier", RefTo::Supplier)],
};

pub static CO: FileSpec = FileSpec {
    name: "co.csv",
    table: "co",
    required: false,
    columns: &[
        c("item", Code, false),
        c("location", Code, false),
        c("customer", Code, false),
        c("order_number", Code, false),
        c("line", Code, false),
        c("order_date", Date, false),
        c("order_qty", Dec, false),
        c("requested_date", Date, false),
        c("outstanding_qty", Dec, false),
    ],
    keys: &[&["order_number", "line"]],
    refs: &[r("item", RefTo::Item), r("location", RefTo::Location)],
};

pub static TRANSFER: FileSpec = FileSpec {
    name: "transfer.csv",
    table: "transfer",
    required: false,
    columns: &[
        c("item", Code, false),
        c("source_location", Code, false),
        c("dest_location", Code, false),
        c("transfer_number", Code, false),
        c("line", Code, false),
        c("transfer_date", Date, false),
        c("expected_date", Date, false),
        c("transfer_qty", Dec, false),
        c("qty_to_ship", Dec, false),
        c("qty_to_receive", Dec, false),
    ],
    keys: &[&["transfer_number", "line"]],
    refs: &[r("item", RefTo::Item), r("source_location", RefTo::Location), r("dest_location", RefTo::Location)],
};

pub static BOM: FileSpec = FileSpec {
    name: "bom.csv",
    table: "bom",
    required: false,
    columns: &[
        c("item", Code, false),
        c("location", Code, false),
        c("component", Code, false),
        c("component_location", Code, false),
        c("ratio", Dec, false),
    ],
    keys: &[&["item", "location", "component", "component_location"]],
    refs: &[
        r("item", RefTo::Item),
        r("location", RefTo::Location),
        r("component", RefTo::Item),
        r("component_location", RefTo::Location),
    ],
};

pub static SUPERSESSIONS: FileSpec = FileSpec {
    name: "supersessions.csv",
    table: "supersessions",
    required: false,
    columns: &[c("old_item", Code, false), c("new_item", Code, false), c("factor", Dec, false)],
    keys: &[&["old_item"]],
    refs: &[r("new_item", RefTo::Item)],
};

/// Every standard upstream file, in the order a batch carries them.
pub static STANDARD_FILES: &[&FileSpec] =
    &[&LOCATION, &MASTER, &STOCK, &GROUP, &SUPPLIER, &SALES, &PO, &POHIST, &CO, &TRANSFER, &BOM, &SUPERSESSIONS];

/// The spec of a standard file by name (`stock.csv`), or None.
pub fn file_spec(name: &str) -> Option<&'static FileSpec> {
    STANDARD_FILES.iter().copied().find(|f| f.name == name)
}

/// Is `name` a custom file `ut_NNN.csv` (header row, free columns)?
pub fn is_custom_file(name: &str) -> bool {
    name.strip_prefix("ut_")
        .and_then(|r| r.strip_suffix(".csv"))
        .is_some_and(|n| !n.is_empty() && n.len() <= 6 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Is `name` a file a batch may carry (standard or custom)?
pub fn is_known_file(name: &str) -> bool {
    file_spec(name).is_some() || is_custom_file(name)
}

/// A field checked against its column, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    /// Text, codes, exact decimals and ISO dates.
    Text(String),
}

/// A field checked against its column, borrowed from the CSV field it came from: what [`check_field`] gives,
/// without allocating (the import and the Connector's check call it for every field of every row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked<'a> {
    Null,
    Int(i64),
    /// Text, codes, exact decimals and codes of a fixed set: the field itself.
    Text(&'a str),
    /// A date, as ISO `YYYY-MM-DD`.
    Date([u8; 10]),
}

impl Checked<'_> {
    /// The bytes stored for a text-like value (the ISO form of a date); `None` for `Null` and `Int`.
    pub fn text_bytes(&self) -> Option<&[u8]> {
        match self {
            Checked::Text(t) => Some(t.as_bytes()),
            Checked::Date(d) => Some(d),
            Checked::Null | Checked::Int(_) => None,
        }
    }

    /// The owned value ([`parse_field`]'s result).
    pub fn to_value(self) -> Value {
        match self {
            Checked::Null => Value::Null,
            Checked::Int(i) => Value::Int(i),
            Checked::Text(t) => Value::Text(t.to_string()),
            // the ISO form is ASCII digits and dashes
            Checked::Date(d) => Value::Text(d.iter().map(|&b| char::from(b)).collect()),
        }
    }
}

/// Check one CSV field (already unquoted) against its column; `Ok(Value::Null)` for an empty optional field.
/// The error says what is wrong in words an ERP admin understands. Allocates the value: see [`check_field`].
pub fn parse_field(col: &Column, raw: &str) -> Result<Value, String> {
    check_field(col, raw).map(Checked::to_value)
}

/// [`parse_field`] without allocating: the value borrows `raw` (a date is returned in ISO form). Only the error,
/// a message for people, allocates.
pub fn check_field<'a>(col: &Column, raw: &'a str) -> Result<Checked<'a>, String> {
    if raw.is_empty() {
        return if col.required && col.kind != Unused {
            Err(format!("{} is required but empty", col.name))
        } else {
            Ok(Checked::Null)
        };
    }
    match col.kind {
        Text | Code => {
            if raw.contains(['\n', '\r']) {
                Err(format!("{} contains a line break", col.name))
            } else if col.kind == Code && (raw.starts_with(char::is_whitespace) || raw.ends_with(char::is_whitespace)) {
                Err(format!("{} {raw:?} has leading or trailing spaces", col.name))
            } else {
                Ok(Checked::Text(raw))
            }
        }
        Int => raw.parse::<i64>().map(Checked::Int).map_err(|_| format!("{} {raw:?} is not a whole number", col.name)),
        Dec => {
            if is_decimal(raw) {
                Ok(Checked::Text(raw))
            } else {
                Err(format!("{} {raw:?} is not a decimal number (digits, optional '-' and one '.')", col.name))
            }
        }
        Date => iso_date(raw)
            .map(Checked::Date)
            .ok_or_else(|| format!("{} {raw:?} is not a date in YYYY/MM/DD form", col.name)),
        OneOf(codes) => {
            if codes.contains(&raw) {
                Ok(Checked::Text(raw))
            } else {
                Err(format!("{} {raw:?} is not one of {}", col.name, codes.join(", ")))
            }
        }
        Flag => match raw {
            "1" => Ok(Checked::Int(1)),
            "0" => Ok(Checked::Int(0)),
            _ => Err(format!("{} {raw:?} must be 1 or 0", col.name)),
        },
        Unused => Ok(Checked::Null),
    }
}

/// The spec's decimal: digits, an optional leading `-` and at most one `.`, with a digit somewhere.
fn is_decimal(s: &str) -> bool {
    let body = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    match frac {
        None => !int.is_empty() && digits(int),
        Some(f) => (!int.is_empty() || !f.is_empty()) && digits(int) && digits(f),
    }
}

/// `YYYY/MM/DD` -> `YYYY-MM-DD`, checking that the day exists. Exactly four, two and two digits: no sign, no
/// spaces (chrono's `%Y/%m/%d` accepts `+2026/2/28` and ` 2026/ 2/28`). Allocates; see [`iso_date`].
pub fn parse_date(s: &str) -> Option<String> {
    iso_date(s).map(|d| d.iter().map(|&b| char::from(b)).collect())
}

/// [`parse_date`] without allocating. Called for every date of every row, so it avoids chrono's format parser
/// (about 10x faster).
pub fn iso_date(s: &str) -> Option<[u8; 10]> {
    let &[y0, y1, y2, y3, b'/', m0, m1, b'/', d0, d1] = s.as_bytes() else {
        return None;
    };
    let num =
        |digits: &[u8]| digits.iter().try_fold(0u32, |n, &c| c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0')));
    let (year, month, day) = (num(&[y0, y1, y2, y3])?, num(&[m0, m1])?, num(&[d0, d1])?);
    chrono::NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
    Some([y0, y1, y2, y3, b'-', m0, m1, b'-', d0, d1])
}

/// Write one field as the spec wants it: text-like columns double-quoted with `"` doubled and line breaks
/// replaced by spaces; numbers and dates bare; empty values as an empty field.
pub fn format_field(kind: Kind, value: &str, out: &mut String) {
    if value.is_empty() || kind == Unused {
        return;
    }
    match kind {
        Text | Code | OneOf(_) => {
            out.push('"');
            for ch in value.chars() {
                match ch {
                    '"' => out.push_str("\"\""),
                    '\r' | '\n' => out.push(' '),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        _ => out.push_str(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_has_unique_name_and_table() {
        let mut names: Vec<_> = STANDARD_FILES.iter().map(|f| f.name).collect();
        let mut tables: Vec<_> = STANDARD_FILES.iter().map(|f| f.table).collect();
        names.dedup();
        tables.sort();
        tables.dedup();
        assert_eq!(names.len(), STANDARD_FILES.len());
        assert_eq!(tables.len(), STANDARD_FILES.len());
        assert_eq!(STOCK.columns.len(), 21);
        assert_eq!(MASTER.columns.len(), 9);
        assert_eq!(PO.columns.len(), 11);
    }

    #[test]
    fn keys_and_refs_name_real_columns() {
        for f in STANDARD_FILES {
            for key in f.keys {
                assert!(!key.is_empty(), "{}", f.name);
                for col in *key {
                    assert!(f.column_index(col).is_some(), "{}: key column {col}", f.name);
                }
            }
            for r in f.refs {
                let i = f.column_index(r.column).unwrap_or_else(|| panic!("{}: ref column {}", f.name, r.column));
                assert!(matches!(f.columns[i].kind, Code), "{}: {} is not a code", f.name, r.column);
                for target in r.to.files() {
                    assert!(!file_spec(target).unwrap().keys.is_empty(), "{target} has no key to refer to");
                }
            }
        }
        assert_eq!(SALES.date_columns().collect::<Vec<_>>(), ["order_date", "invoice_date"]);
        assert_eq!(POHIST.column_index("receipt_date"), Some(10));
        assert!(RefTo::Group(3).describe().contains("group 3"));
    }

    #[test]
    fn fields_are_checked() {
        let qty = c("qty", Dec, true);
        assert_eq!(parse_field(&qty, "-1.50").unwrap(), Value::Text("-1.50".into()));
        assert!(parse_field(&qty, "").unwrap_err().contains("required"));
        assert!(parse_field(&qty, "1e5").is_err());
        assert!(parse_field(&qty, "1.2.3").is_err());
        assert!(parse_field(&qty, "-").is_err());
        let d = c("d", Date, false);
        assert_eq!(parse_field(&d, "2026/02/28").unwrap(), Value::Text("2026-02-28".into()));
        assert!(parse_field(&d, "2026/02/30").is_err());
        assert!(parse_field(&d, "2026-02-01").is_err());
        for bad in ["+2026/2/28", " 2026/2/28", "2026/ 2/28", "2026/2/28", "02026/02/28", "2026/13/01", "2026/00/10"] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
        assert_eq!(parse_date("2024/02/29").as_deref(), Some("2024-02-29"));
        assert_eq!(parse_field(&d, "").unwrap(), Value::Null);
        let t = c("t", OneOf(&["ST", "DC"]), false);
        assert!(parse_field(&t, "XX").unwrap_err().contains("ST, DC"));
        assert_eq!(parse_field(&c("n", Int, true), "-7").unwrap(), Value::Int(-7));
        assert!(parse_field(&c("n", Int, true), "7.5").is_err());
    }

    #[test]
    fn check_field_borrows_the_field() {
        let raw = String::from("ITEM-1");
        match check_field(&c("item", Code, true), &raw) {
            Ok(Checked::Text(t)) => assert!(std::ptr::eq(t, raw.as_str())),
            other => panic!("{other:?}"),
        }
        let d = check_field(&c("d", Date, true), "2024/02/29").unwrap();
        assert_eq!(d, Checked::Date(*b"2024-02-29"));
        assert_eq!(d.text_bytes(), Some(&b"2024-02-29"[..]));
        assert_eq!(d.to_value(), Value::Text("2024-02-29".into()));
        assert_eq!(check_field(&c("f", Flag, false), "1"), Ok(Checked::Int(1)));
        assert_eq!(check_field(&c("f", Flag, false), ""), Ok(Checked::Null));
        assert!(check_field(&c("n", Int, true), "x").unwrap_err().contains("whole number"));
    }

    #[test]
    fn text_is_quoted_and_cleaned() {
        let mut s = String::new();
        format_field(Text, "a \"big\"\nbox, 10\u{e9}", &mut s);
        assert_eq!(s, "\"a \"\"big\"\" box, 10\u{e9}\"");
        let mut s = String::new();
        format_field(Dec, "1.5", &mut s);
        format_field(Text, "", &mut s);
        assert_eq!(s, "1.5");
    }

    #[test]
    fn custom_names() {
        assert!(is_custom_file("ut_001.csv"));
        assert!(!is_custom_file("ut_.csv"));
        assert!(!is_custom_file("ut_1/../x.csv"));
        assert!(is_known_file("sales.csv"));
        assert!(!is_known_file("../sales.csv"));
    }
}
