-- A normalised ERP: surrogate keys everywhere, codes live in the master tables, documents are split into headers
-- and lines, quantities received are a separate table. Real DATE columns (ISO text in SQLite), costs as NUMERIC.
-- Load it with `sqlite3 erp.db < schema.sql`; `mapping.toml` next to this file maps it to the standard files.

CREATE TABLE site (
    site_id    INTEGER PRIMARY KEY,
    site_code  TEXT NOT NULL UNIQUE,
    site_name  TEXT,
    kind       TEXT NOT NULL,            -- DC, STORE
    region     TEXT,
    closed     INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE vendor (
    vendor_id   INTEGER PRIMARY KEY,
    vendor_code TEXT NOT NULL UNIQUE,
    vendor_name TEXT,
    country     TEXT,
    lead_days   INTEGER
);
CREATE TABLE product_group (
    group_id INTEGER PRIMARY KEY,
    code     TEXT NOT NULL UNIQUE,
    name     TEXT
);
CREATE TABLE product (
    product_id INTEGER PRIMARY KEY,      -- never changes: the unique identifier of master.csv
    sku        TEXT NOT NULL UNIQUE,     -- the item code people use (may be renamed)
    name       TEXT,
    uom        TEXT,
    group_id   INTEGER REFERENCES product_group,
    weight_kg  REAL,
    volume_l   REAL
);
-- One row per product and site: stock, costs, and where the site gets it from.
CREATE TABLE product_site (
    product_id        INTEGER NOT NULL REFERENCES product,
    site_id           INTEGER NOT NULL REFERENCES site,
    main_vendor_id    INTEGER REFERENCES vendor,
    supplying_site_id INTEGER REFERENCES site,   -- stores are supplied by the DC
    avg_cost          NUMERIC(12, 4),
    last_cost         NUMERIC(12, 4),
    price             NUMERIC(12, 2),
    on_hand           INTEGER NOT NULL DEFAULT 0,
    reserved          INTEGER NOT NULL DEFAULT 0,
    created_at        TIMESTAMP,
    lead_days         INTEGER,
    min_qty           INTEGER,
    multiple          INTEGER,
    PRIMARY KEY (product_id, site_id)
);
CREATE TABLE customer (
    customer_id INTEGER PRIMARY KEY,
    code        TEXT NOT NULL UNIQUE,
    name        TEXT
);
CREATE TABLE invoice (
    invoice_id   INTEGER PRIMARY KEY,
    invoice_no   TEXT NOT NULL,
    site_id      INTEGER NOT NULL REFERENCES site,
    customer_id  INTEGER REFERENCES customer,
    order_date   DATE NOT NULL,
    invoice_date DATE NOT NULL
);
CREATE TABLE invoice_line (
    invoice_id INTEGER NOT NULL REFERENCES invoice,
    line_no    INTEGER NOT NULL,
    product_id INTEGER NOT NULL REFERENCES product,
    qty        NUMERIC(12, 3) NOT NULL,  -- returns are negative
    unit_cost  NUMERIC(12, 4),
    amount     NUMERIC(12, 2),
    PRIMARY KEY (invoice_id, line_no)
);
CREATE TABLE purchase_order (
    po_id      INTEGER PRIMARY KEY,
    po_no      TEXT NOT NULL UNIQUE,
    site_id    INTEGER NOT NULL REFERENCES site,
    vendor_id  INTEGER NOT NULL REFERENCES vendor,
    ordered_on DATE NOT NULL,
    status     TEXT NOT NULL,            -- open, closed
    rush       INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE purchase_order_line (
    po_id      INTEGER NOT NULL REFERENCES purchase_order,
    line_no    INTEGER NOT NULL,
    product_id INTEGER NOT NULL REFERENCES product,
    qty        NUMERIC(12, 3) NOT NULL,
    unit_cost  NUMERIC(12, 4),
    due_on     DATE NOT NULL,
    PRIMARY KEY (po_id, line_no)
);
CREATE TABLE receipt (
    receipt_id  INTEGER PRIMARY KEY,
    po_id       INTEGER NOT NULL,
    line_no     INTEGER NOT NULL,
    received_on DATE NOT NULL,
    qty         NUMERIC(12, 3) NOT NULL,
    FOREIGN KEY (po_id, line_no) REFERENCES purchase_order_line
);

INSERT INTO site VALUES
    (1, 'DC1', 'Central warehouse', 'DC', 'North', 0),
    (2, 'ST1', 'Store Riverside', 'STORE', 'North', 0),
    (3, 'ST2', 'Store Hillview', 'STORE', 'South', 0);
INSERT INTO vendor VALUES
    (1, 'V-ACME', 'Acme Tools Ltd', 'GB', 14),
    (2, 'V-NORD', 'Nordic "Fasteners" AB', 'SE', 30);
INSERT INTO product_group VALUES (1, 'HAND', 'Hand tools'), (2, 'FAST', 'Fasteners');
INSERT INTO product VALUES
    (101, 'HAM-500', 'Claw hammer, 500 g', 'EA', 1, 0.65, 0.9),
    (102, 'SAW-22', 'Hand saw 22"', 'EA', 1, 0.8, 2.5),
    (103, 'SCR-4x40', 'Wood screws 4x40, box of 200', 'BOX', 2, 0.9, 0.6),
    (104, 'NUT-M8', 'Hex nut M8 (100)', 'BOX', 2, 0.5, 0.3),
    (105, 'PLR-200', 'Combination pliers 200 mm', 'EA', 1, 0.3, 0.4);
INSERT INTO product_site VALUES
    (101, 1, 1, NULL, 8.4500, 8.6000, 14.99, 120, 10, '2024-05-02 09:30:00', 14, 24, 12),
    (102, 1, 1, NULL, 11.2000, 11.5000, 21.50, 60, 0, '2024-05-02 09:30:00', 14, 10, 5),
    (103, 1, 2, NULL, 3.1000, 3.0500, 6.20, 400, 40, '2025-01-15 14:00:00', 30, 100, 50),
    (104, 1, 2, NULL, 1.9000, 1.9500, 3.80, 800, 0, '2025-01-15 14:00:00', 30, 200, 100),
    (105, 1, 1, NULL, 6.7000, 6.7000, 12.40, 45, 5, '2025-06-30 08:00:00', 14, 12, 6),
    (101, 2, 1, 1, 8.4500, 8.6000, 14.99, 12, 0, '2024-05-03 10:00:00', 2, 2, 1),
    (102, 2, 1, 1, 11.2000, 11.5000, 21.50, 6, 1, '2024-05-03 10:00:00', 2, 1, 1),
    (103, 2, 2, 1, 3.1000, 3.0500, 6.20, 30, 0, '2025-01-16 10:00:00', 2, 10, 10),
    (104, 2, 2, 1, 1.9000, 1.9500, 3.80, 55, 0, '2025-01-16 10:00:00', 2, 20, 10),
    (105, 2, 1, 1, 6.7000, 6.7000, 12.40, 4, 0, '2025-07-01 10:00:00', 2, 2, 1),
    (101, 3, 1, 1, 8.4500, 8.6000, 14.99, 9, 0, '2024-05-03 10:00:00', 2, 2, 1),
    (103, 3, 2, 1, 3.1000, 3.0500, 6.20, 22, 2, '2025-01-16 10:00:00', 2, 10, 10),
    (104, 3, 2, 1, 1.9000, 1.9500, 3.80, 0, 0, '2025-01-16 10:00:00', 2, 20, 10);
INSERT INTO customer VALUES (1, 'C-1001', 'Builders Co'), (2, 'C-1002', 'Walk-in');
INSERT INTO invoice VALUES
    (1, 'INV-9001', 2, 1, '2026-02-27', '2026-02-28'),
    (2, 'INV-9002', 2, 2, '2026-03-02', '2026-03-02'),
    (3, 'INV-9003', 3, 2, '2026-03-04', '2026-03-05'),
    (4, 'INV-9004', 2, 1, '2026-03-06', '2026-03-07'),
    (5, 'CRN-9005', 3, 1, '2026-03-08', '2026-03-08'),
    (6, 'INV-9006', 2, 2, '2026-03-09', '2026-03-09'),
    (7, 'INV-9007', 3, NULL, '2026-03-10', '2026-03-10');
INSERT INTO invoice_line VALUES
    (1, 1, 101, 2, 8.4500, 29.98), (1, 2, 103, 5, 3.1000, 31.00),
    (2, 1, 104, 10, 1.9000, 38.00),
    (3, 1, 101, 1, 8.4500, 14.99), (3, 2, 103, 3, 3.1000, 18.60),
    (4, 1, 102, 1, 11.2000, 21.50), (4, 2, 105, 2, 6.7000, 24.80),
    (5, 1, 103, -1, 3.1000, -6.20),
    (6, 1, 104, 4.5, 1.9000, 17.10),
    (7, 1, 101, 1, 8.4500, 14.99);
INSERT INTO purchase_order VALUES
    (1, 'PO-5001', 1, 1, '2026-02-10', 'closed', 0),
    (2, 'PO-5002', 1, 2, '2026-02-20', 'open', 0),
    (3, 'PO-5003', 1, 1, '2026-03-05', 'open', 1);
INSERT INTO purchase_order_line VALUES
    (1, 1, 101, 48, 8.6000, '2026-02-24'),
    (1, 2, 102, 10, 11.5000, '2026-02-24'),
    (2, 1, 103, 500, 3.0500, '2026-03-20'),
    (2, 2, 104, 1000, 1.9500, '2026-03-20'),
    (3, 1, 105, 24, 6.7000, '2026-03-12');
INSERT INTO receipt VALUES
    (1, 1, 1, '2026-02-25', 48),
    (2, 1, 2, '2026-02-25', 6),
    (3, 1, 2, '2026-03-03', 4),
    (4, 2, 1, '2026-03-09', 200);
