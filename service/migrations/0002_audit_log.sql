-- Audit trail of administrative actions. Rows are only ever inserted.
-- depends: 0001_initial

CREATE TABLE audit_log (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    created_at DATETIME(6) NOT NULL,
    actor_id CHAR(32) CHARACTER SET ascii NULL,
    action VARCHAR(64) CHARACTER SET ascii NOT NULL,
    target_type VARCHAR(32) CHARACTER SET ascii NOT NULL,
    target_id VARCHAR(128) NOT NULL,
    detail VARCHAR(1024) NOT NULL DEFAULT '',
    client_ip VARCHAR(45) CHARACTER SET ascii NOT NULL DEFAULT '',
    PRIMARY KEY (id),
    KEY audit_log_target (target_type, target_id, created_at),
    KEY audit_log_actor (actor_id, created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
