-- A legacy ERP with wide, denormalised tables (the kind an old ISAM system exports to SQL): one row per item and
-- warehouse carries the item, the warehouse and the supplier; codes in blank-padded CHAR columns; dates as
-- YYYYMMDD integers or DD.MM.YYYY text; flags Y/N; amounts as text with a decimal comma. No surrogate keys.
-- Load it with `sqlite3 erp.db < schema.sql`; `mapping.toml` next to this file maps it to the standard files.

CREATE TABLE ITMWHS (
    ITNO     CHAR(12) NOT NULL,   -- item number, blank padded
    ITDESC   VARCHAR(60),
    UNIT     CHAR(3),
    WEIGHT   VARCHAR(12),         -- kg with a decimal comma: '0,650'
    CATCD    CHAR(6),             -- category code
    CATDS    VARCHAR(30),         -- category name
    WHNO     CHAR(4) NOT NULL,    -- warehouse
    WHNAME   VARCHAR(40),
    WHTYPE   CHAR(1),             -- C central warehouse, S store
    WHACT    CHAR(1),             -- Y/N
    SUPNO    CHAR(8),             -- main supplier
    SUPNAME  VARCHAR(40),
    SUPCTRY  CHAR(2),
    SUPLT    INTEGER,             -- supplier lead time, days
    COSTAVG  VARCHAR(14),         -- '8,4500'
    COSTLST  VARCHAR(14),
    PRICE    VARCHAR(14),
    ONHAND   INTEGER,
    ALLOC    INTEGER,
    CRTDT    INTEGER,             -- created, YYYYMMDD
    MINQ     INTEGER,
    MULT     INTEGER,
    PRIMARY KEY (ITNO, WHNO)
);
-- Sales history: one row per invoice line, everything repeated.
CREATE TABLE SLSHIS (
    DOCNO   CHAR(10) NOT NULL,
    DOCLN   INTEGER NOT NULL,
    ITNO    CHAR(12) NOT NULL,
    WHNO    CHAR(4) NOT NULL,
    CUSNO   CHAR(8),
    ORDDT   INTEGER,              -- YYYYMMDD
    INVDT   CHAR(10),             -- DD.MM.YYYY
    QTY     VARCHAR(12),          -- '2,000'; credit notes negative
    COST    VARCHAR(14),
    AMOUNT  VARCHAR(14),
    PRIMARY KEY (DOCNO, DOCLN)
);
-- Open purchase order lines, header fields repeated on every line.
CREATE TABLE POOPEN (
    PONO    CHAR(10) NOT NULL,
    POLN    INTEGER NOT NULL,
    ITNO    CHAR(12) NOT NULL,
    WHNO    CHAR(4) NOT NULL,
    SUPNO   CHAR(8) NOT NULL,
    ORDDT   INTEGER,              -- YYYYMMDD
    DUEDT   INTEGER,              -- YYYYMMDD
    QTYORD  INTEGER,
    QTYREC  INTEGER,
    PRICE   VARCHAR(14),
    PRIMARY KEY (PONO, POLN)
);

INSERT INTO ITMWHS VALUES
    ('A100        ', 'Garden hose 25 m', 'PCS', '2,100', 'GARD  ', 'Garden', 'W01 ', 'Main warehouse', 'C', 'Y',
     'S0042   ', 'Hoses & Co', 'DE', 21, '12,5000', '12,8000', '24,90', 140, 12, 20230115, 20, 10),
    ('A100        ', 'Garden hose 25 m', 'PCS', '2,100', 'GARD  ', 'Garden', 'S01 ', 'Shop Altstadt', 'S', 'Y',
     'S0042   ', 'Hoses & Co', 'DE', 21, '12,5000', '12,8000', '24,90', 8, 0, 20230301, 2, 1),
    ('A200        ', 'Watering can 10 l', 'PCS', '0,650', 'GARD  ', 'Garden', 'W01 ', 'Main warehouse', 'C', 'Y',
     'S0042   ', 'Hoses & Co', 'DE', 21, '4,2000', '4,3500', '9,95', 80, 0, 20230115, 12, 6),
    ('B310        ', 'Screwdriver set, 6 pcs', 'SET', '0,400', 'TOOL  ', 'Tools', 'W01 ', 'Main warehouse', 'C', 'Y',
     'S0107   ', 'Werkzeug "Pro" GmbH', 'AT', 35, '7,1000', '7,0000', '15,50', 60, 4, 20240610, 10, 5),
    ('B310        ', 'Screwdriver set, 6 pcs', 'SET', '0,400', 'TOOL  ', 'Tools', 'S01 ', 'Shop Altstadt', 'S', 'Y',
     'S0107   ', 'Werkzeug "Pro" GmbH', 'AT', 35, '7,1000', '7,0000', '15,50', 5, 1, 20240612, 1, 1),
    ('B310        ', 'Screwdriver set, 6 pcs', 'SET', '0,400', 'TOOL  ', 'Tools', 'S02 ', 'Shop Neustadt', 'S', 'N',
     'S0107   ', 'Werkzeug "Pro" GmbH', 'AT', 35, '7,1000', '7,0000', '15,50', 0, 0, 20240612, 1, 1);
INSERT INTO SLSHIS VALUES
    ('R2600101  ', 1, 'A100        ', 'S01 ', 'K0001   ', 20260226, '27.02.2026', '1,000', '12,5000', '24,90'),
    ('R2600101  ', 2, 'B310        ', 'S01 ', 'K0001   ', 20260226, '27.02.2026', '2,000', '14,2000', '31,00'),
    ('R2600102  ', 1, 'A200        ', 'W01 ', 'K0007   ', 20260303, '04.03.2026', '12,000', '50,4000', '107,40'),
    ('G2600103  ', 1, 'A100        ', 'S01 ', 'K0001   ', 20260305, '05.03.2026', '-1,000', '-12,5000', '-24,90'),
    ('R2600104  ', 1, 'B310        ', 'S02 ', NULL, 20260309, '09.03.2026', '1,000', '7,1000', '15,50');
INSERT INTO POOPEN VALUES
    ('B26-0017  ', 1, 'A100        ', 'W01 ', 'S0042   ', 20260301, 20260322, 100, 40, '12,8000'),
    ('B26-0017  ', 2, 'A200        ', 'W01 ', 'S0042   ', 20260301, 20260322, 60, 0, '4,3500'),
    ('B26-0021  ', 1, 'B310        ', 'W01 ', 'S0107   ', 20260306, 20260410, 50, 0, '7,0000');
