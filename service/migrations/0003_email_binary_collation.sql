-- Compare emails byte for byte. The service stores them normalized (NFC, lower-cased,
-- ASCII domain), and a case- and accent-insensitive collation made distinct addresses
-- such as alicé@ and alice@ collide.
-- depends: 0002_audit_log

ALTER TABLE users MODIFY email VARCHAR(320) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
