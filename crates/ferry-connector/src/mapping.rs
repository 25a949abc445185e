//! The admin's mapping from ERP to standard files: one SQL query per file of `DATA-SPEC.md`, written in TOML.
//!
//! ```toml
//! [files."stock.csv"]
//! query = "SELECT item, location, ... FROM ..."
//! ```
//!
//! The query's result columns map by position onto the file's columns in `DATA-SPEC.md` (use `NULL` or `''` for a
//! column the ERP does not have). Custom files `ut_NNN.csv` take any columns; their header row is the query's
//! column names. [`default_mapping`] is the mapping of the sample ERP that [`crate::sample`] generates.

use std::collections::BTreeMap;

use ferry_proto::spec;
use serde::{Deserialize, Serialize};

/// Every file the Connector extracts, by file name (`stock.csv`), with its query.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Mapping {
    #[serde(default)]
    pub files: BTreeMap<String, FileMapping>,
}

/// How to extract one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMapping {
    /// One SQL `SELECT` whose result columns map by position onto the file's columns.
    pub query: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MappingError {
    #[error("the mapping is not valid TOML: {0}")]
    Toml(String),
    #[error("the mapping names file {key:?}, which is not a file of DATA-SPEC.md; use one of {valid} or ut_NNN.csv")]
    UnknownFile { key: String, valid: String },
    #[error("the mapping has no query for the required file {0}; add a [files.\"{0}\"] section with a query")]
    MissingRequired(String),
    #[error("the query for {0} is empty; write a SELECT or remove the [files.\"{0}\"] section")]
    EmptyQuery(String),
}

impl Mapping {
    /// Parse and [`validate`](Mapping::validate) a mapping. Sections other than `[files."..."]` are ignored, so the
    /// mapping may live in a larger configuration file.
    pub fn from_toml(text: &str) -> Result<Mapping, MappingError> {
        let m: Mapping = toml::from_str(text).map_err(|e| MappingError::Toml(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    /// Check that every key is a standard file or `ut_NNN.csv`, that no query is empty, and that every required file
    /// of `DATA-SPEC.md` has a query.
    pub fn validate(&self) -> Result<(), MappingError> {
        for (key, file) in &self.files {
            if !spec::is_known_file(key) {
                let valid = spec::STANDARD_FILES.iter().map(|f| f.name).collect::<Vec<_>>().join(", ");
                return Err(MappingError::UnknownFile { key: key.chars().take(80).collect(), valid });
            }
            if file.query.trim().is_empty() {
                return Err(MappingError::EmptyQuery(key.clone()));
            }
        }
        for req in spec::STANDARD_FILES.iter().filter(|f| f.required) {
            if !self.files.contains_key(req.name) {
                return Err(MappingError::MissingRequired(req.name.to_string()));
            }
        }
        Ok(())
    }

    /// The mapped files in batch order: standard files in the order of `DATA-SPEC.md`, then custom files by name.
    pub fn ordered(&self) -> Vec<(&str, &FileMapping)> {
        let mut out: Vec<(&str, &FileMapping)> =
            spec::STANDARD_FILES.iter().filter_map(|f| self.files.get(f.name).map(|m| (f.name, m))).collect();
        out.extend(self.files.iter().filter(|(k, _)| spec::is_custom_file(k)).map(|(k, m)| (k.as_str(), m)));
        out
    }
}

/// The mapping of the sample ERP schema of [`crate::sample`] (shipped by `ferry connector init --sample` and the
/// demo). It also serves as a worked example for admins writing their own.
pub fn default_mapping() -> &'static str {
    DEFAULT_MAPPING
}

const DEFAULT_MAPPING: &str = r#"# Ferry Connector mapping: one SQL query per standard file of DATA-SPEC.md.
# The query's result columns map by position onto the file's columns; return NULL for a column the ERP lacks.
# Dates may come back as YYYY-MM-DD, YYYY-MM-DD HH:MM:SS or YYYY/MM/DD; the Connector writes YYYY/MM/DD.
# This mapping reads the sample ERP database made by `ferry connector init --sample`.

[files."location.csv"]
# location, description, active, group, type (ST/DC/CW)
query = """
SELECT wh_code, name, is_active, region,
       CASE wh_type WHEN 'STORE' THEN 'ST' WHEN 'DC' THEN 'DC' ELSE 'CW' END
FROM warehouses
ORDER BY wh_code
"""

[files."master.csv"]
# item, description, planning uom, unit volume, unit weight, 3 unused, unique id
query = """
SELECT sku, description, uom, volume_m3, weight_kg, NULL, NULL, NULL, item_id
FROM items
ORDER BY item_id
"""

[files."stock.csv"]
# item, location, date added, inventory cost, purchase cost, price, on hand, allocated, supply type, supply code,
# supplier, purchase uom, purchase factor, lead time, min order qty, order multiple, custom groups 1-5
query = """
SELECT iw.sku, iw.wh_code, iw.added_on, iw.avg_cost, iw.last_cost, iw.list_price, iw.on_hand, iw.allocated,
       CASE WHEN iw.supply_wh IS NULL THEN 'EX' ELSE 'IN' END,
       COALESCE(iw.supply_wh, iw.vendor_no),
       COALESCE(iw.supply_wh, iw.vendor_no),
       iw.purch_uom, iw.pack_qty, iw.lead_days, iw.min_order, iw.order_multiple,
       i.category, i.brand, NULL, NULL, NULL
FROM item_warehouse iw
JOIN items i ON i.sku = iw.sku
ORDER BY iw.sku, iw.wh_code
"""

[files."group.csv"]
# group number (1-5), value, description: custom group 1 = category, 2 = brand
query = """
SELECT 1, cat_code, name FROM categories
UNION ALL
SELECT 2, brand_code, name FROM brands
"""

[files."supplier.csv"]
# supplier, description, type (local/import/internal), lead time days; the DC supplies the stores
query = """
SELECT vendor_no, name, CASE WHEN country = 'US' THEN 'local' ELSE 'import' END, lead_days
FROM vendors
UNION ALL
SELECT wh_code, name, 'internal', 2 FROM warehouses WHERE wh_type = 'DC'
"""

[files."sales.csv"]
# item, location, customer, order date, invoice date, qty, cost of sales, sales value, issues qty, details
query = """
SELECT sku, wh_code, cust_no, order_date, invoice_date, qty,
       ROUND(qty * unit_cost, 2), net_amount, NULL,
       invoice_no || '/' || line_no
FROM sales_lines
ORDER BY line_id
"""

[files."po.csv"]
# open purchase orders: item, location, supplier, order number, line, order date, order qty, expected date,
# outstanding qty, order type (P/M), unit cost
query = """
SELECT l.sku, h.wh_code, h.vendor_no, h.po_no, l.line_no, h.order_date, l.qty_ordered, l.due_date,
       l.qty_ordered - l.qty_received, 'P', l.unit_cost
FROM purchase_orders h
JOIN po_lines l ON l.po_no = h.po_no
WHERE h.status = 'OPEN' AND l.qty_received < l.qty_ordered
ORDER BY h.po_no, l.line_no
"""

[files."pohist.csv"]
# receipts: item, location, supplier, order number, line, order date, order qty, expected date, urgency (ST/EM),
# qty received, receipt date, unit cost (add a date filter here to send only the last 12 months)
query = """
SELECT l.sku, h.wh_code, h.vendor_no, h.po_no, l.line_no, h.order_date, l.qty_ordered, l.due_date,
       CASE WHEN h.urgent = 1 THEN 'EM' ELSE 'ST' END,
       l.qty_received, l.received_date, l.unit_cost
FROM purchase_orders h
JOIN po_lines l ON l.po_no = h.po_no
WHERE l.qty_received > 0
ORDER BY l.received_date, h.po_no, l.line_no
"""

[files."co.csv"]
# open customer orders: item, location, customer, order number, line, order date, order qty, requested date,
# outstanding qty (not yet allocated)
query = """
SELECT sku, wh_code, cust_no, order_no, line_no, order_date, qty_ordered, requested_date,
       qty_ordered - qty_shipped - qty_allocated
FROM customer_orders
WHERE qty_ordered > qty_shipped
ORDER BY order_no, line_no
"""

[files."transfer.csv"]
# open transfers: item, from, to, transfer number, line, transfer date, expected arrival, qty, to ship, to receive
query = """
SELECT sku, from_wh, to_wh, transfer_no, line_no, created_on, eta, qty,
       qty - qty_shipped, qty - qty_received
FROM transfers
WHERE qty_received < qty
ORDER BY transfer_no, line_no
"""
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_mapping_is_valid_and_covers_required_files() {
        let m = Mapping::from_toml(default_mapping()).unwrap();
        for f in spec::STANDARD_FILES.iter().filter(|f| f.required) {
            assert!(m.files.contains_key(f.name), "{}", f.name);
        }
        let order: Vec<_> = m.ordered().into_iter().map(|(n, _)| n).collect();
        assert_eq!(order[0], "location.csv");
    }

    #[test]
    fn errors_name_the_problem() {
        let base = default_mapping();
        let bad = format!("{base}\n[files.\"stocks.csv\"]\nquery = \"SELECT 1\"\n");
        let e = Mapping::from_toml(&bad).unwrap_err().to_string();
        assert!(e.contains("\"stocks.csv\"") && e.contains("stock.csv") && e.contains("ut_NNN.csv"), "{e}");

        let e = Mapping::from_toml("[files.\"location.csv\"]\nquery = \"SELECT 1\"\n").unwrap_err();
        assert_eq!(e, MappingError::MissingRequired("master.csv".into()));
        assert!(e.to_string().contains("master.csv"));

        let typo = base.replacen("query = \"\"\"\nSELECT wh_code", "querry = \"\"\"\nSELECT wh_code", 1);
        assert!(matches!(Mapping::from_toml(&typo), Err(MappingError::Toml(_))));

        let custom = format!("{base}\n[files.\"ut_001.csv\"]\nquery = \"SELECT 1 AS a\"\n");
        let m = Mapping::from_toml(&custom).unwrap();
        assert_eq!(m.ordered().last().unwrap().0, "ut_001.csv");

        let empty = format!("{base}\n[files.\"ut_002.csv\"]\nquery = \"  \"\n");
        assert_eq!(Mapping::from_toml(&empty).unwrap_err(), MappingError::EmptyQuery("ut_002.csv".into()));
    }
}
