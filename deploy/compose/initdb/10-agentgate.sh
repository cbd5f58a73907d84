#!/bin/sh
# Run once by the postgres image, on an empty data directory (/docker-entrypoint-initdb.d): the store's role and
# database (README, "Running several replicas"), and an example source, "warehouse", read through a role with
# SELECT grants only. The passwords come from compose.yaml's environment (your .env).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -v store_password="$AGENTGATE_STORE_PASSWORD" -v reader_password="$WAREHOUSE_READER_PASSWORD" <<'SQL'
-- The store: a role that owns its one database and nothing else (no superuser, CREATEDB or CREATEROLE). As the
-- owner it creates the gateway's tables and its chain function at the first start.
CREATE ROLE agentgate LOGIN PASSWORD :'store_password';
CREATE DATABASE agentgate OWNER agentgate;
REVOKE ALL ON DATABASE agentgate FROM PUBLIC;

-- The example source: the data agents read.
CREATE ROLE warehouse_reader LOGIN PASSWORD :'reader_password';
CREATE DATABASE warehouse;
REVOKE ALL ON DATABASE warehouse FROM PUBLIC;
GRANT CONNECT ON DATABASE warehouse TO warehouse_reader;
\connect warehouse
CREATE TABLE customers (id integer PRIMARY KEY, name text NOT NULL, email text, country text NOT NULL);
INSERT INTO customers VALUES
    (1, 'Ada Lovelace', 'ada@example.com', 'GB'),
    (2, 'Grace Hopper', 'grace@example.com', 'US'),
    (3, 'Edsger Dijkstra', NULL, 'NL');
GRANT USAGE ON SCHEMA public TO warehouse_reader;
GRANT SELECT ON customers TO warehouse_reader;
SQL
