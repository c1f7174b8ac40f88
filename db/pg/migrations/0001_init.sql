-- mxid schema 1: the tables of package db's bbolt buckets, plus the change
-- log and the onbind queue's claim lease. Text keys use COLLATE "C" so they
-- compare and sort bytewise, as bbolt keys do, whatever the database's
-- locale. Times are Unix milliseconds (bigint), as in the Go types.

-- Small documents owned by a feature (the lookup pepper, ...). The key
-- "schema" is reserved (the version lives in schema_version).
CREATE TABLE meta (
    key   text COLLATE "C" PRIMARY KEY,
    value bytea NOT NULL
);

-- Access tokens, stored only as their SHA-256.
CREATE TABLE accounts (
    token_hash bytea PRIMARY KEY,
    user_id    text NOT NULL,
    created_ts bigint NOT NULL
);

-- Accepted policy versions, one row per (user, policy).
CREATE TABLE terms (
    user_id text COLLATE "C" NOT NULL,
    policy  text COLLATE "C" NOT NULL,
    version text NOT NULL,
    PRIMARY KEY (user_id, policy)
);

-- 3PID -> Matrix ID; bindings_by_mxid is the reverse index (unbind by
-- homeservers, ScanBindings' order).
CREATE TABLE bindings (
    medium     text COLLATE "C" NOT NULL,
    address    text COLLATE "C" NOT NULL,
    mxid       text COLLATE "C" NOT NULL,
    ts         bigint NOT NULL,
    not_before bigint NOT NULL,
    not_after  bigint NOT NULL,
    PRIMARY KEY (medium, address)
);
CREATE INDEX bindings_by_mxid ON bindings (mxid, medium, address);

-- Validation sessions: at most one per (3PID, client_secret).
CREATE TABLE sessions (
    sid               text COLLATE "C" PRIMARY KEY,
    medium            text COLLATE "C" NOT NULL,
    address           text COLLATE "C" NOT NULL,
    client_secret     text COLLATE "C" NOT NULL,
    token             text NOT NULL,
    failures          integer NOT NULL,
    attempted         boolean NOT NULL,
    send_attempt      bigint NOT NULL,
    undo_attempted    boolean NOT NULL,
    undo_send_attempt bigint NOT NULL,
    next_link         text NOT NULL,
    created_ts        bigint NOT NULL,
    modified_ts       bigint NOT NULL,
    validated_ts      bigint NOT NULL,
    UNIQUE (medium, address, client_secret)
);

-- Third-party invites, pending (queued_job 0) or carried by an onbind job;
-- the ephemeral public key index answers EphemeralKeyExists.
CREATE TABLE invites (
    token                text COLLATE "C" PRIMARY KEY,
    medium               text COLLATE "C" NOT NULL,
    address              text COLLATE "C" NOT NULL,
    room_id              text NOT NULL,
    sender               text NOT NULL,
    ephemeral_public_key text COLLATE "C" NOT NULL,
    created_ts           bigint NOT NULL,
    expires_ts           bigint NOT NULL,
    queued_job           bigint NOT NULL DEFAULT 0,
    delivered_ts         bigint NOT NULL DEFAULT 0
);
CREATE INDEX invites_by_3pid ON invites (medium, address, token);
CREATE INDEX invites_by_ephemeral_key ON invites (ephemeral_public_key);

-- The onbind queue. claimed_until (Unix ms, the claiming replica's clock)
-- hides a job claimed by DueJobs from the other replicas until it passes;
-- 0 = not claimed.
CREATE TABLE jobs (
    id            bigserial PRIMARY KEY,
    destination   text NOT NULL,
    body          bytea NOT NULL,
    invite_tokens text[] NOT NULL,
    attempts      integer NOT NULL,
    due_ts        bigint NOT NULL,
    created_ts    bigint NOT NULL,
    last_error    text NOT NULL,
    claimed_until bigint NOT NULL DEFAULT 0
);
CREATE INDEX jobs_due ON jobs (due_ts, id);

-- Token buckets of the rate limits that protect other people (verification
-- mails and SMS, invites), shared by the replicas: tokens held at updated_ms
-- (the charging replica's clock). full_ms is when the bucket is full again;
-- from then on the row means nothing and is swept. Keys are bytes (the
-- limit's name, "/", what it counts).
CREATE TABLE budgets (
    key        bytea PRIMARY KEY,
    tokens     double precision NOT NULL,
    updated_ms bigint NOT NULL,
    full_ms    bigint NOT NULL
);
CREATE INDEX budgets_full ON budgets (full_ms);

-- certmagic's storage (tls.mode = "acme"): the ACME account, certificates,
-- their keys and metadata, and challenge tokens, shared by the replicas so
-- they get one certificate and any of them answers a challenge. Keys are
-- slash-separated paths ("certificates/<ca>/<domain>/<domain>.crt").
CREATE TABLE tls_storage (
    key         text COLLATE "C" PRIMARY KEY,
    value       bytea NOT NULL,
    modified_ms bigint NOT NULL
);

-- The change log: one row per write that changes what lookups see, in
-- commit order (writers append under an advisory lock held to commit).
-- ts is the database's clock, for pruning.
CREATE TABLE changes (
    seq     bigserial PRIMARY KEY,
    kind    text NOT NULL,
    medium  text COLLATE "C" NOT NULL,
    address text COLLATE "C" NOT NULL,
    mxid    text COLLATE "C" NOT NULL,
    ts      bigint NOT NULL
);
CREATE INDEX changes_ts ON changes (ts);

-- The highest seq pruned so far: a reader asking from before it has
-- missed changes (db.ErrChangesPruned). One row.
CREATE TABLE changes_pruned (
    one     boolean PRIMARY KEY DEFAULT true CHECK (one),
    through bigint NOT NULL
);
INSERT INTO changes_pruned (through) VALUES (0);

-- The LDAP directory snapshot (what the last successful sync read), replaced
-- whole by each sync in one transaction; its summary is the meta key
-- "directory_snapshot".
CREATE TABLE directory (
    medium  text COLLATE "C" NOT NULL,
    address text COLLATE "C" NOT NULL,
    mxid    text NOT NULL,
    PRIMARY KEY (medium, address)
);

-- The display names of the directory snapshot's searchable entries (the
-- user directory search), written and removed with it.
CREATE TABLE directory_names (
    mxid text COLLATE "C" PRIMARY KEY,
    name text NOT NULL
);

-- The long-term signing key every replica signs with: created once, by
-- whichever replica starts first. One row.
CREATE TABLE signing_key (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    seed bytea NOT NULL
);

-- The audit log: who removed what, and when (unbinds, erasures, the admin
-- commands that change data). It never holds an address: address_hash is
-- the keyed hash of one (its key is the meta document "audit_secret",
-- created once by whichever replica needs it first). Swept after its
-- retention.
CREATE TABLE audit (
    id           bigserial PRIMARY KEY,
    ts           bigint NOT NULL,
    actor        text NOT NULL,
    action       text NOT NULL,
    medium       text NOT NULL,
    address_hash text NOT NULL,
    mxid         text NOT NULL,
    detail       text NOT NULL
);
CREATE INDEX audit_ts ON audit (ts, id);
CREATE INDEX audit_address ON audit (address_hash) WHERE address_hash <> '';

-- When each access token was last used (Unix ms, recorded at most once a
-- day; 0: not since it was made): tokens idle for [accounts]
-- token_lifetime are swept.
ALTER TABLE accounts ADD COLUMN used_ts bigint NOT NULL DEFAULT 0;
