-- pg-edge-realtime: change capture for Postgres.
--
-- Install (idempotent: running it again changes nothing, and keeps watches and cursors):
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/realtime.sql
-- or `npx pg-edge-realtime install`.
--
-- What it creates, all in schema `realtime`:
--   outbox            the durable log the relay reads in commit order
--   watch(table, …)   capture INSERT/UPDATE/DELETE of a table into the outbox
--   unwatch(table)    stop capturing (by table, name or oid, also of a table since dropped)
--   publish(…)        write an application event into the outbox
--   forget_retained(…) make a channel drop the rows it retains under a table's old names
--   cursors, doorbells the relays' own state
--   event triggers    realtime_follow_ddl, realtime_follow_drop: follow renames, set schema,
--                     column and key changes and drops of watched tables (docs/schema-changes.md).
--                     Creating them needs a superuser; installed by another role, the script
--                     says so in a NOTICE and the capture functions check for such changes instead.
-- Requires PostgreSQL 13 or later (xid8, pg_snapshot).

-- "already exists, skipping" notices would be noise on every re-install.
set client_min_messages = warning;

create schema if not exists realtime;

-- One row per installation: the install id makes event ids unique across databases, so a
-- Worker never mistakes a fresh database's event 1 for an old one (it would drop it as a duplicate).
create table if not exists realtime.installation (
  singleton boolean primary key default true check (singleton),
  install_id text not null default substr(md5(random()::text || clock_timestamp()::text), 1, 12),
  installed_at timestamptz not null default now()
);
insert into realtime.installation default values on conflict do nothing;
-- How changes are captured:
--   'outbox'       a trigger writes a row of realtime.outbox per change (the default; any Postgres);
--   'wal'          a trigger writes a transactional logical decoding message per change, read by a
--                  relay started with --source wal over a replication slot (wal_level = logical);
--   'publication'  no trigger: watched tables are in the publication `realtime`, and a relay
--                  started with --source publication decodes their own changes from the WAL.
-- Change it with realtime.set_capture(), never by hand: capture is set up anew for it.
alter table realtime.installation add column if not exists capture text not null default 'outbox';
do $$
begin
  if not exists (select from pg_constraint where conname = 'installation_capture_valid' and pg_get_constraintdef(oid) like '%publication%') then
    alter table realtime.installation drop constraint if exists installation_capture_valid;
    alter table realtime.installation add constraint installation_capture_valid check (capture in ('outbox', 'wal', 'publication'));
  end if;
end $$;

-- The publication the relay streams. Under capture 'publication' each watched table is in it, and
-- pgoutput sends their row changes; under the others it holds no table (the triggers' messages
-- are decoded whatever it holds). From Postgres 18 it publishes stored generated columns too, so
-- that a row arrives whole, as to_json(row) writes it in the trigger modes; the changes of a
-- partitioned table are published as its own (publish_via_partition_root), as its triggers see them.
do $$
begin
  if not exists (select from pg_publication where pubname = 'realtime') then
    if current_setting('server_version_num')::int >= 180000 then
      execute 'create publication realtime with (publish_via_partition_root = true, publish_generated_columns = stored)';
    else
      create publication realtime with (publish_via_partition_root = true);
    end if;
  end if;
exception when insufficient_privilege then
  raise notice 'realtime: could not create the publication realtime (%): capture ''publication'' needs it; create it as the database owner: create publication realtime', sqlerrm;
end $$;

-- The outbox. `xid` is the writing transaction's id: the relay delivers rows in the order their
-- transactions became visible (PgQ's snapshot batches, see relay/outbox.ts), not in id order,
-- because ids are taken before commit and a transaction can commit after one with a larger id.
create table if not exists realtime.outbox (
  id bigint generated always as identity primary key,
  xid xid8 not null default pg_current_xact_id(),
  channel text not null,
  event text not null,
  -- json, not jsonb: nothing queries inside it, and building json is cheaper for writers.
  payload json not null default 'null',
  created_at timestamptz not null default now(),
  -- The event's row is kept as the channel's retained state (watch(..., retain => true)).
  retain boolean not null default false,
  -- The same rules as protocol/wire.ts: a bad name fails the writing statement here instead of
  -- reaching the Worker, which would refuse the batch and stop delivery behind it.
  constraint outbox_channel_valid check (channel ~ '^[A-Za-z0-9_.:@-]{1,128}$'),
  constraint outbox_event_valid check (event ~ '^[A-Za-z0-9_.:-]{1,64}$')
);
create index if not exists outbox_xid on realtime.outbox (xid);
alter table realtime.outbox add column if not exists retain boolean not null default false;
-- Installs from before payload became json are converted (the capture functions are regenerated
-- at the end of this script).
do $$
begin
  if (select atttypid from pg_attribute where attrelid = 'realtime.outbox'::regclass and attname = 'payload') = 'jsonb'::regtype then
    alter table realtime.outbox alter column payload drop default;
    alter table realtime.outbox alter column payload type json using payload::json;
    alter table realtime.outbox alter column payload set default 'null';
  end if;
end $$;

-- Where each relay has got to: the last snapshot whose events were acknowledged (`done`), and,
-- while a snapshot window is being shipped in pages, its upper snapshot and the last id sent.
create table if not exists realtime.cursors (
  name text primary key,
  done pg_snapshot not null,
  target pg_snapshot,
  after_id bigint,
  updated_at timestamptz not null default now()
);

-- The doorbell. A NOTIFY at commit takes a cluster-wide lock (PreCommit_Notify in
-- src/backend/commands/async.c), which serialized 16 writers from 14.7k to 3.5k commits/s here.
-- So writers ring only when a relay says it is idle (`waiting`, one row per relay cursor: a
-- partitioned deployment has several): an idle relay wakes within a millisecond of a commit, and
-- busy relays (which loop without sleeping) cost writers one read of this small table. A ring can
-- be missed only by a transaction that read `waiting` just before the relay set it; the relay's
-- poll interval bounds that delay.
create table if not exists realtime.doorbells (
  name text primary key,
  waiting boolean not null default false
);
-- Before 0.2 there was one doorbell for one relay.
drop table if exists realtime.doorbell;

-- The channels relays have delivered to (written by the relay, once per new channel name). When
-- events are lost at the source (a relay's replication slot was invalidated), these are the
-- channels told to start a new epoch (their clients reset), so no client is left with a silent hole.
create table if not exists realtime.channels (
  name text primary key,
  first_seen timestamptz not null default now()
);

-- A slot-reading relay's replication slot that had to be made anew because the old one was
-- invalidated (its events since then are lost): `generation` names the new one, and `announced`
-- says whether every known channel was told (a reset notice) and the retained rows captured
-- again. A relay that stops half-way announces again when it starts (the notices are deduplicated).
create table if not exists realtime.slot_epochs (
  slot text primary key,
  generation text not null,
  announced boolean not null default false,
  lost_at timestamptz not null default now()
);

-- Tables under watch and how their events are routed.
create table if not exists realtime.watches (
  tbl regclass primary key,
  channel text not null,
  key_columns text[] not null,
  capture_function text not null,
  created_at timestamptz not null default now()
);
alter table realtime.watches add column if not exists retain boolean not null default false;
-- The table's schema and name as they are now: renames and set schema are followed (by the event
-- triggers, else by the next install or watch()). A dropped table leaves `tbl` a dangling oid
-- (a regclass does not follow drops), and these are then all that names it: the install's
-- warning and realtime.unwatch('name') use them.
alter table realtime.watches add column if not exists table_schema text;
alter table realtime.watches add column if not exists table_name text;
-- The attnums of the channel template's {column} placeholders, in order. A column keeps its
-- attnum through a rename (pg_attribute), so the template follows its columns by number. Null
-- for a watch made before this column existed: its template is resolved by name once.
alter table realtime.watches add column if not exists template_attnums int2[];
-- Null while the watch captures; otherwise why it stopped (no primary key, a template column
-- dropped), since when. Its capture triggers are gone meanwhile: see docs/schema-changes.md.
alter table realtime.watches add column if not exists suspended text;
alter table realtime.watches add column if not exists suspended_at timestamptz;
-- watch() gained a parameter; the old signature would make calls ambiguous.
drop function if exists realtime.watch(regclass, text);

create or replace function realtime.ring() returns void
language plpgsql as $$
begin
  if exists (select from realtime.doorbells where waiting) then
    perform pg_notify('realtime_doorbell', '');
  end if;
end $$;

-- A captured row whose channel template gives no valid channel name (a NULL in a template
-- column, or a value with characters a channel cannot hold) has nowhere to go. Failing the
-- statement would break the application's write for the sake of an event nobody can receive, so
-- its event is left out, with a WARNING naming the table and the template; the write goes on.
-- Called only for such a row (see realtime.sink_sql), never on the fast path.
-- Capture functions generated by an earlier version call this for a bad name until this script
-- regenerates them at its end: a NULL leaves the event out (its message would be NULL).
create or replace function realtime.invalid_channel(channel text) returns text
language plpgsql immutable as $$
begin
  perform realtime.unroutable(channel, 'a watched table', 'change');
  return null;
end $$;
create or replace function realtime.unroutable(channel text, tbl text, event text) returns boolean
language plpgsql as $$
begin
  raise warning 'realtime: this % on % is not captured: its channel template gave %, which is not a channel name',
    event, tbl, coalesce(quote_literal(channel), 'NULL (a column the template names is NULL)')
    using hint = 'Channel names are 1-128 of A-Z a-z 0-9 _ . : @ -; make the template''s columns NOT NULL and their values fit, or watch the table with another template';
  return false;
end $$;

-- The statement that writes one event per row of `query` (columns channel, event, payload,
-- retain, in the order the events must be delivered) to where `capture` says:
--   outbox  an insert into realtime.outbox;
--   wal     one transactional logical decoding message per row, prefix 'realtime', content
--           "<channel>\n<event>\n<1 or 0: retain>\n<payload json>" (relay/wal.ts reads it).
--           Decoding hands messages over in commit order, so the relay needs no snapshots,
--           cursor rows or doorbell, and writers write no second row: that is what makes it
--           cheaper for them.
-- Rows whose channel is not a valid name are left out (realtime.unroutable says so), in both.
-- The subquery keeps `query`'s order: a subquery with ORDER BY is not flattened into its caller.
-- `keyword` is 'perform' for a statement in plpgsql, 'select' for a query (in a CTE: it returns a
-- row per event).
drop function if exists realtime.sink_sql(text, text, text);
create or replace function realtime.sink_sql(query text, capture text, keyword text default 'perform', table_expr text default 'TG_TABLE_NAME') returns text
language sql immutable as $$
  select case when capture in ('wal', 'publication') then
      keyword || ' pg_logical_emit_message(true, ''realtime'', '
        || 'e.channel || E''\n'' || e.event || E''\n'' || (case when e.retain::boolean then ''1'' else ''0'' end) || E''\n'' || e.payload::text)'
        || ' from (' || query || ') e(channel, event, payload, retain)'
        || ' where case when e.channel ~ ''^[A-Za-z0-9_.:@-]{1,128}$'' then true else realtime.unroutable(e.channel, ' || table_expr || ', e.event) end'
    else 'insert into realtime.outbox (channel, event, payload, retain) select e.channel, e.event, e.payload, e.retain::boolean from (' || query || ') e(channel, event, payload, retain)'
        || ' where case when e.channel ~ ''^[A-Za-z0-9_.:@-]{1,128}$'' then true else realtime.unroutable(e.channel, ' || table_expr || ', e.event) end'
        || case when keyword = 'select' then ' returning 1' else '' end
  end
$$;

-- Switches where captured events go ('outbox' or 'wal', see realtime.installation.capture) and
-- regenerates every watch's capture function (realtime.refresh_watches: watches of dropped
-- tables are removed, with a WARNING, rather than failing the switch). A relay started with
-- --source wal calls it once its replication slot exists: an event written in 'wal' capture
-- while no slot exists is lost, so switching to 'wal' requires one.
create or replace function realtime.set_capture(mode text) returns void
language plpgsql as $$
begin
  if mode is null or mode not in ('outbox', 'wal', 'publication') then
    raise exception 'realtime.set_capture: % is not a capture mode', coalesce(quote_literal(mode), 'NULL')
      using hint = 'Use ''outbox'', ''wal'' or ''publication''', errcode = '22023';
  end if;
  if mode in ('wal', 'publication') then
    if current_setting('wal_level') <> 'logical' then
      raise exception 'realtime.set_capture: wal capture needs wal_level = logical, and it is %', current_setting('wal_level')
        using hint = 'Run ALTER SYSTEM SET wal_level = logical and restart Postgres (on a managed database: turn on its logical replication setting)', errcode = '55000';
    end if;
    if not exists (select from pg_replication_slots where database = current_database() and plugin = 'pgoutput' and slot_name like 'realtime%') then
      raise exception 'realtime.set_capture: this database has no relay replication slot, so % events would be lost', mode
        using hint = format('Start the relay with --source %s: it creates its slot, then switches capture itself', mode), errcode = '55000';
    end if;
    if mode = 'publication' and not exists (select from pg_publication where pubname = 'realtime') then
      raise exception 'realtime.set_capture: capture ''publication'' needs the publication realtime'
        using hint = 'Create it as the database owner: create publication realtime', errcode = '55000';
    end if;
  end if;
  update realtime.installation set capture = mode where capture is distinct from mode;
  perform realtime.refresh_watches();
end $$;

-- Publishes an application event. Returns the outbox id in 'outbox' capture; null in 'wal'
-- capture, where the event's id is its message's position in the WAL, which the relay reads.
create or replace function realtime.publish(channel text, event text, payload jsonb default 'null')
returns bigint
language plpgsql as $$
declare
  new_id bigint;
begin
  if channel is null or channel !~ '^[A-Za-z0-9_.:@-]{1,128}$' then
    raise exception 'realtime.publish: channel % is not a valid channel name', coalesce(quote_literal(channel), 'NULL')
      using hint = 'Channel names are 1-128 of A-Z a-z 0-9 _ . : @ -', errcode = '22023';
  end if;
  if event is null or event !~ '^[A-Za-z0-9_.:-]{1,64}$' then
    raise exception 'realtime.publish: event % is not a valid event name', coalesce(quote_literal(event), 'NULL')
      using hint = 'Event names are 1-64 of A-Z a-z 0-9 _ . : -', errcode = '22023';
  end if;
  if (select capture from realtime.installation) in ('wal', 'publication') then
    perform pg_logical_emit_message(true, 'realtime', channel || E'\n' || event || E'\n0\n' || coalesce(payload, 'null')::text);
    return null;
  end if;
  insert into realtime.outbox (channel, event, payload) values (channel, event, coalesce(payload, 'null')::json)
    returning id into new_id;
  perform realtime.ring();
  return new_id;
end $$;

-- Before 0.2 a NULL template value failed the write here; it is now left out with a WARNING
-- (realtime.unroutable). Capture functions generated by an earlier version call it until this
-- script regenerates them at its end, so it stays, passing the value through (a NULL then makes
-- the channel NULL, as in the new functions).
create or replace function realtime.template_value(value text, column_name text, tbl text)
returns text
language sql immutable as $$ select value $$;

-- Turns a channel template ('todos', 'tenant:{tenant_id}') into a SQL expression over the
-- row alias `alias`. Placeholders name columns; their text values are spliced in. `table_expr`
-- is the SQL for the table's name in the error about a NULL value: TG_TABLE_NAME in a capture
-- function, so the message names the table as it is called when the write happens.
drop function if exists realtime.channel_expression(regclass, text, text);
create or replace function realtime.channel_expression(tbl regclass, template text, alias text, table_expr text)
returns text
language plpgsql stable as $$
declare
  expr text := '';
  rest text := template;
  m text[];
  col text;
begin
  if template is null or template = '' then
    raise exception 'realtime.watch: channel template must not be empty' using errcode = '22023';
  end if;
  if template !~ '^([A-Za-z0-9_.:@-]|\{[^{}]+\})+$' then
    raise exception 'realtime.watch: channel template % is not valid', quote_literal(template)
      using hint = 'Channel names are 1-128 of A-Z a-z 0-9 _ . : @ -, plus {column} placeholders', errcode = '22023';
  end if;
  loop
    m := regexp_match(rest, '^(.*?)\{([^{}]+)\}(.*)$');
    exit when m is null;
    col := m[2];
    if not exists (select 1 from pg_attribute where attrelid = tbl and attname = col and attnum > 0 and not attisdropped) then
      raise exception 'realtime.watch: channel template % names column %, which % does not have', quote_literal(template), quote_ident(col), tbl
        using errcode = '42703';
    end if;
    -- A NULL makes the whole name NULL, which realtime.sink_sql leaves out with a WARNING.
    expr := expr || quote_literal(m[1]) || ' || ' || alias || '.' || quote_ident(col) || '::text || ';
    rest := m[3];
  end loop;
  return expr || quote_literal(rest);
end $$;

-- The {column} placeholders of a channel template, in order: 'a:{x}:{y}' gives {x,y}.
create or replace function realtime.template_columns(template text)
returns text[]
language sql immutable as $$
  select coalesce(array_agg(m.c[1] order by m.n), '{}')
    from regexp_matches(template, '\{([^{}]+)\}', 'g') with ordinality m(c, n)
$$;

-- `template` with its placeholders naming `columns`, in order: ('a:{x}', {z}) gives 'a:{z}'.
create or replace function realtime.template_rename(template text, columns text[])
returns text
language plpgsql immutable as $$
declare
  result text := '';
  rest text := template;
  m text[];
  i int := 0;
begin
  loop
    m := regexp_match(rest, '^(.*?)\{([^{}]+)\}(.*)$');
    exit when m is null;
    i := i + 1;
    result := result || m[1] || '{' || columns[i] || '}';
    rest := m[3];
  end loop;
  return result || rest;
end $$;

-- A watch's channel template with its placeholders naming the columns of `tbl` as they are now:
-- found by attnum (`attnums`, realtime.watches.template_attnums), so a renamed column is
-- followed; by name for a watch from before template_attnums (attnums null). Null when a
-- column it needs was dropped.
create or replace function realtime.current_template(tbl oid, template text, attnums int2[])
returns text
language sql stable as $$
  select case when bool_and(a.attname is not null) is not false
              then realtime.template_rename(template, array_agg(a.attname::text order by p.n)) end
    from unnest(realtime.template_columns(template)) with ordinality p(name, n)
    left join pg_attribute a
      on a.attrelid = tbl and a.attnum > 0 and not a.attisdropped
     and case when attnums is null then a.attname = p.name else a.attnum = attnums[p.n] end
$$;

-- The primary key of `tbl`: its columns' names and attnums, in key order, and its index; nulls
-- when it has none.
create or replace function realtime.primary_key(tbl oid, out key_columns text[], out key_attnums int2[], out key_index oid)
language sql stable as $$
  select array_agg(a.attname::text order by k.n), array_agg(a.attnum order by k.n), min(i.indexrelid)
    from pg_index i
    cross join unnest(i.indkey::int2[]) with ordinality k(attnum, n)
    join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
   where i.indrelid = tbl and i.indisprimary
$$;

-- The query behind one capture statement: (channel, event, payload, retain) rows in delivery
-- order for `op` ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE') on `tbl`, over the trigger's
-- transition tables new_rows and old_rows. `template` and `keys` name the table's columns as
-- they are now. `schema_expr` and `table_expr` are the SQL for the event's schema and table: a
-- capture function passes TG_TABLE_SCHEMA and TG_TABLE_NAME, which PL/pgSQL reads from the
-- firing trigger's relation, so events follow a renamed or moved table with no new function.
create or replace function realtime.capture_query(tbl regclass, op text, template text, keys text[], retain boolean,
                                                  schema_expr text, table_expr text)
returns text
language plpgsql stable as $$
declare
  head text := format('%L, %s, %L, %s', 'schema', schema_expr, 'table', table_expr);
  keep text := quote_literal(coalesce(retain, false));
  key_new text;
  key_old text;
  join_on text;
begin
  select 'json_build_object(' || string_agg(format('%L, n.%I', k, k), ', ' order by o) || ')',
         'json_build_object(' || string_agg(format('%L, o.%I', k, k), ', ' order by o) || ')',
         string_agg(format('o.%I = n.%I', k, k), ' and ' order by o)
    into key_new, key_old, join_on
    from unnest(keys) with ordinality u(k, o);
  case op
  when 'INSERT' then
    return format($q$
          select %1$s, 'insert', json_build_object('op', 'INSERT', %2$s, 'key', %3$s, 'new', to_json(n.*), 'old', null), %4$s
            from new_rows n$q$,
      realtime.channel_expression(tbl, template, 'n', table_expr), head, key_new, keep);
  when 'DELETE' then
    return format($q$
          select %1$s, 'delete', json_build_object('op', 'DELETE', %2$s, 'key', %3$s, 'new', null, 'old', to_json(o.*)), %4$s
            from old_rows o$q$,
      realtime.channel_expression(tbl, template, 'o', table_expr), head, key_old, keep);
  when 'UPDATE' then
    -- `to_json(n.*)`, never `to_json(n)`: a table may have a column named n.
    -- The keys come from the columns (nk, ok), as INSERT and DELETE build them: taken from nj/oj
    -- (json -> 'k') they would re-parse the whole row, and json refuses to re-parse a value it
    -- stored (a json column holding "\u0000" or a lone surrogate escape): the write would fail.
    -- Pair old and new rows by key. nc/oc (the new and old row's channel) are NULL exactly
    -- when that side is missing, since a template never yields NULL.
    return format($q$
          with j as (
            select to_json(n.*) as nj, to_json(o.*) as oj,
                   %4$s as nk, %8$s as ok,
                   case when n.%5$I is null then null else %1$s end as nc,
                   case when o.%5$I is null then null else %2$s end as oc
              from new_rows n full join old_rows o on %6$s
          )
          select channel, event, payload, %7$s from (
            select oc as channel, 'delete' as event, 0 as phase,
                   json_build_object('op', 'DELETE', %3$s, 'key', ok, 'new', null, 'old', oj) as payload
              from j where oc is not null and oc is distinct from nc
            union all
            select nc, 'update', 1,
                   json_build_object('op', 'UPDATE', %3$s, 'key', nk, 'new', nj, 'old', oj)
              from j where nc = oc
            union all
            select nc, 'insert', 2,
                   json_build_object('op', 'INSERT', %3$s, 'key', nk, 'new', nj, 'old', null)
              from j where nc is not null and nc is distinct from oc
          ) changes
          order by phase$q$,
      realtime.channel_expression(tbl, template, 'n', table_expr), realtime.channel_expression(tbl, template, 'o', table_expr),
      head, key_new, keys[1], join_on, keep, key_old);
  when 'TRUNCATE' then
    return format($q$
          select %1$L, 'truncate', json_build_object('op', 'TRUNCATE', %2$s, 'key', '{}'::json, 'new', null, 'old', null), %3$s$q$,
      template, head, keep);
  else
    raise exception 'realtime.capture_query: % is not a trigger operation', quote_literal(op) using errcode = '22023';
  end case;
end $$;

-- Drops the capture triggers watch() created on `tbl` (only those that exist: no notices).
create or replace function realtime.drop_capture_triggers(tbl regclass)
returns void
language plpgsql as $$
declare
  t name;
begin
  for t in select tgname from pg_trigger where tgrelid = tbl and tgname like 'realtime\_capture\_%' loop
    execute format('drop trigger %I on %s', t, tbl);
  end loop;
end $$;

-- True when this database's event triggers follow the DDL of watched tables (created by an
-- install run as a superuser, and not disabled): capture functions then need no guard.
create or replace function realtime.ddl_followed()
returns boolean
language sql stable as $$
  select count(*) = 2 from pg_event_trigger
   where evtname in ('realtime_follow_ddl', 'realtime_follow_drop') and evtenabled <> 'D'
$$;

-- Keeps realtime.watches' table_schema and table_name current (of `only`, or of every watch),
-- writing only rows whose table was renamed or moved.
create or replace function realtime.refresh_names(only_tbl oid default null)
returns void
language sql as $$
  update realtime.watches w set table_schema = n.nspname, table_name = c.relname
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
   where c.oid = w.tbl and (only_tbl is null or w.tbl = only_tbl)
     and (w.table_schema, w.table_name) is distinct from (n.nspname::text, c.relname::text)
$$;

-- Under capture 'publication': puts `tbl` in the publication realtime, once its replica identity
-- lets the relay route every change from the WAL alone. A delete's WAL record holds only the
-- replica identity's columns (the primary key, by default), so a table needs one (a primary key,
-- an index, or FULL), and its channel template's columns must be among them.
create or replace function realtime.publish_table(tbl regclass, label text, template_attnums int2[], key_attnums int2[])
returns void
language plpgsql as $$
declare
  ident "char" := (select c.relreplident from pg_class c where c.oid = tbl);
  identity int2[];
  outside text;
begin
  identity := case ident
    when 'd' then key_attnums
    when 'i' then (select i.indkey::int2[] from pg_index i where i.indrelid = tbl and i.indisreplident)
    when 'f' then null -- every column
    else '{}' end;
  if ident = 'n' or (ident <> 'f' and coalesce(cardinality(identity), 0) = 0) then
    raise exception '% has no replica identity, so the WAL holds nothing of a deleted row to route it by', label
      using errcode = '42P10',
            hint = format('Give it a primary key, or: alter table %s replica identity full', label);
  end if;
  if identity is not null then
    select quote_ident(a.attname) into outside
      from unnest(template_attnums) t(n) join pg_attribute a on a.attrelid = tbl and a.attnum = t.n
     where t.n <> all (identity) limit 1;
    if outside is not null then
      raise exception '% routes by column %, which the WAL does not hold for a deleted row (it is not in the replica identity)', label, outside
        using errcode = '55000',
              hint = format('Let the WAL hold whole old rows: alter table %s replica identity full; or route by key columns', label);
    end if;
  end if;
  if not exists (select from pg_publication_rel pr join pg_publication p on p.oid = pr.prpubid where p.pubname = 'realtime' and pr.prrelid = tbl) then
    execute format('alter publication realtime add table %s', tbl);
  end if;
end $$;

-- Takes `tbl` out of the publication realtime, if it is in it.
create or replace function realtime.unpublish_table(tbl oid)
returns void
language plpgsql as $$
begin
  if exists (select from pg_publication_rel pr join pg_publication p on p.oid = pr.prpubid where p.pubname = 'realtime' and pr.prrelid = tbl) then
    execute format('alter publication realtime drop table %s', tbl::regclass);
  end if;
end $$;

-- The UPDATE branch of a capture function fired per row: NEW and OLD at hand, no transition
-- tables, no join of them, one statement per event. A single-row update (the commonest
-- statement of an application) costs the per-statement form's transition tables, join, union and
-- sort; per row it costs about half (docs/benchmarks.md). The events are the per-statement form's:
-- an update, or, when the key or the channel changed, a delete of the old then an insert of the
-- new. Their order within a statement is the rows' order, which is right for a key that is not
-- deferrable: Postgres checks such a key row by row, so a row can take a key only after the row
-- that held it moved away, earlier in the same statement, and its delete precedes this insert.
-- (A deferrable key lets two rows swap keys in one statement: those tables keep the per-statement
-- form, which sends every delete before any insert.) A bulk update costs more per row than in the
-- per-statement form: inserts and deletes, where bulk statements are common, stay per statement.
create or replace function realtime.row_update_sql(tbl regclass, template text, keys text[], retain boolean, capture text)
returns text
language plpgsql stable as $$
declare
  head text := format('%L, TG_TABLE_SCHEMA, %L, TG_TABLE_NAME', 'schema', 'table');
  keep text := quote_literal(coalesce(retain, false));
  key_new text;
  key_old text;
  same_key text;
  nc text := realtime.channel_expression(tbl, template, 'NEW', 'TG_TABLE_NAME');
  oc text := realtime.channel_expression(tbl, template, 'OLD', 'TG_TABLE_NAME');
begin
  select 'json_build_object(' || string_agg(format('%L, NEW.%I', k, k), ', ' order by o) || ')',
         'json_build_object(' || string_agg(format('%L, OLD.%I', k, k), ', ' order by o) || ')',
         string_agg(format('NEW.%I is not distinct from OLD.%I', k, k), ' and ' order by o)
    into key_new, key_old, same_key
    from unnest(keys) with ordinality u(k, o);
  return format($b$if %1$s and (%2$s) is not distinct from (%3$s) then
          %4$s;
        else
          %5$s;
          %6$s;
        end if$b$,
    same_key, nc, oc,
    realtime.sink_sql(format($q$select %s, 'update', json_build_object('op', 'UPDATE', %s, 'key', %s, 'new', to_json(NEW), 'old', to_json(OLD)), %s$q$, nc, head, key_new, keep), capture),
    realtime.sink_sql(format($q$select %s, 'delete', json_build_object('op', 'DELETE', %s, 'key', %s, 'new', null, 'old', to_json(OLD)), %s$q$, oc, head, key_old, keep), capture),
    realtime.sink_sql(format($q$select %s, 'insert', json_build_object('op', 'INSERT', %s, 'key', %s, 'new', to_json(NEW), 'old', null), %s$q$, nc, head, key_new, keep), capture));
end $$;

-- Generates the capture function of the watch of `tbl` from its realtime.watches row and the
-- catalog as it is now (the template's columns by attnum, the current primary key), and makes
-- its triggers exist. Raises when the table cannot be captured: it has no primary key, or a
-- template column was dropped (callers other than watch() then suspend the watch).
-- The function is replaced only when its text changes, and the triggers only when they are not
-- exactly the ones wanted, so a DDL that changed nothing they depend on writes no catalog row,
-- and re-running the install changes no object.
create or replace function realtime.generate_capture(tbl regclass)
returns void
language plpgsql as $$
declare
  w record;
  rel record;
  pk record;
  template text;
  tattnums int2[];
  dropped text;
  label text;
  capture text;
  followed boolean := realtime.ddl_followed();
  check_sql text;
  others int2[];
  -- What opens the function's if-chain over TG_OP: 'if', or the guard's branch and 'elsif'.
  branch text := 'if';
  decl text := '';
  ring text;
  fname text := 'capture_' || tbl::oid;
  -- Updates are captured per row (see realtime.row_update_sql) when the key cannot be deferred and
  -- event triggers follow the table; otherwise per statement, from the transition tables.
  row_update boolean;
  body text;
  fn oid;
  wanted text[];
begin
  select * into w from realtime.watches x where x.tbl = generate_capture.tbl;
  if not found then
    raise exception 'realtime: % is not watched', tbl using errcode = '55000';
  end if;
  select c.relname, n.nspname into rel from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = tbl;
  if not found then
    raise exception 'realtime: table % was dropped', tbl::oid using errcode = '42P01';
  end if;
  label := format('%I.%I', rel.nspname, rel.relname);

  template := realtime.current_template(tbl, w.channel, w.template_attnums);
  if template is null then
    -- Name the placeholder whose column is gone, as the stored template spells it.
    select p.name into dropped
      from unnest(realtime.template_columns(w.channel)) with ordinality p(name, n)
     where not exists (select from pg_attribute a where a.attrelid = tbl and a.attnum > 0 and not a.attisdropped
                         and case when w.template_attnums is null then a.attname = p.name else a.attnum = w.template_attnums[p.n] end)
     limit 1;
    raise exception 'its channel template % needs column %, which % no longer has', quote_literal(w.channel), quote_ident(dropped), label
      using errcode = '42703',
            hint = format('Watch it again with a template over columns it has: select realtime.watch(%L, %L); or stop watching it: select realtime.unwatch(%L)',
                          label, '<template>', label);
  end if;
  tattnums := array(select a.attnum from unnest(realtime.template_columns(template)) with ordinality p(name, n)
                      join pg_attribute a on a.attrelid = tbl and a.attname = p.name and a.attnum > 0 and not a.attisdropped
                     order by p.n);
  select * into pk from realtime.primary_key(tbl);
  select i.capture into capture from realtime.installation i;
  if capture = 'publication' then
    -- No trigger: the table's own changes are decoded from the WAL (relay/changes.ts routes them,
    -- following renames by itself); the table is in the publication, and nothing else is needed.
    perform realtime.publish_table(tbl, label, tattnums, pk.key_attnums);
    perform realtime.drop_capture_triggers(tbl);
    execute format('drop function if exists realtime.%I()', fname);
    update realtime.watches x
       set channel = template, template_attnums = tattnums, key_columns = coalesce(pk.key_columns, '{}'), capture_function = fname,
           table_schema = rel.nspname, table_name = rel.relname, suspended = null, suspended_at = null
     where x.tbl = generate_capture.tbl
       and (x.channel, x.template_attnums, x.key_columns, x.capture_function, x.table_schema, x.table_name, x.suspended)
           is distinct from (template, tattnums, coalesce(pk.key_columns, '{}'), fname, rel.nspname::text, rel.relname::text, null::text);
    return;
  end if;
  perform realtime.unpublish_table(tbl);
  if pk.key_columns is null then
    raise exception '% has no primary key', label
      using errcode = '42P10',
            hint = format('Change events identify rows by primary key: add one (alter table %s add primary key (...)), %s; or stop watching it: select realtime.unwatch(%L)',
                          label,
                          case when followed then 'and capture resumes by itself' else format('then run select realtime.watch(%L, %L) again', label, template) end,
                          label);
  end if;

  -- Without event triggers (the install was not run by a superuser), nothing regenerates this
  -- function when its table changes: the guard checks, once per statement, that the columns the
  -- statements below name still have those names and that the primary key is the same, and
  -- otherwise captures through SQL built from the catalog as it is now (realtime.capture_sql_now),
  -- so a rename never makes the application's writes fail. The key is checked through its
  -- index's oid: pg_get_indexdef(index, column, true) reads the syscache, and returns the key
  -- column's current name (quoted as quote_ident does), or NULL once the index is gone (the
  -- key was dropped or replaced). A lookup of pg_index by indrelid would be a sequential scan
  -- wherever the planner finds pg_index small. Template columns outside the key are looked up in
  -- pg_attribute by attnum (an index scan).
  if not followed then
    select string_agg(format('pg_catalog.pg_get_indexdef(%s::pg_catalog.oid, %s, true) is distinct from %L', pk.key_index, k.n, quote_ident(k.col)),
                      E'\n         or ' order by k.n)
      into check_sql
      from unnest(pk.key_columns) with ordinality k(col, n);
    others := array(select distinct u from unnest(tattnums) u where u <> all (pk.key_attnums) order by u);
    if cardinality(others) > 0 then
      check_sql := check_sql || format(E'\n         or array(select a.attname::text from pg_catalog.pg_attribute a where a.attrelid = TG_RELID and a.attnum = any (%L::pg_catalog.int2[]) order by a.attnum)'
                                         || E'\n            is distinct from %L::text[]',
                                       others,
                                       array(select a.attname::text from pg_attribute a where a.attrelid = tbl and a.attnum = any (others) order by a.attnum));
    end if;
    decl := E'\n      stale text;';
    branch := format($g$-- No event trigger follows this table's DDL (docs/schema-changes.md): if the columns
      -- this function names were renamed, or the primary key changed, build the statement anew.
      if %1$s then
        stale := realtime.capture_sql_now(TG_RELID, TG_OP, %2$L, %3$L, %4$L, %5$L);
        if stale is null then
          return null;
        end if;
        execute stale using TG_TABLE_SCHEMA, TG_TABLE_NAME;
      elsif$g$,
      check_sql, template, tattnums, coalesce(w.retain, false), capture);
  end if;

  row_update := followed and not exists (select from pg_constraint k where k.conrelid = tbl and k.contype = 'p' and k.condeferrable);

  -- Outbox capture rings the doorbell of an idle relay (realtime.ring(), inlined: a nested
  -- function call was a sixth of this trigger's time); wal capture needs none, decoding streams.
  ring := case when capture = 'wal' then '' else $r$
      get diagnostics affected = row_count;
      if affected > 0 and exists (select from realtime.doorbells where waiting) then
        perform pg_notify('realtime_doorbell', '');
      end if;$r$ end;

  -- One generated function per table, so every statement in it is planned once and cached
  -- (a generic function would EXECUTE dynamic SQL and re-plan on every write).
  body := format($f$
    declare
      affected bigint;%1$s
    begin
      %2$s TG_OP = 'INSERT' then
        %3$s;
      elsif TG_OP = 'DELETE' then
        %4$s;
      elsif TG_OP = 'UPDATE' then
        %5$s;
      else
        %6$s;
      end if;%7$s
      return null;
    end $f$,
    decl, branch,
    realtime.sink_sql(realtime.capture_query(tbl, 'INSERT', template, pk.key_columns, w.retain, 'TG_TABLE_SCHEMA', 'TG_TABLE_NAME'), capture),
    realtime.sink_sql(realtime.capture_query(tbl, 'DELETE', template, pk.key_columns, w.retain, 'TG_TABLE_SCHEMA', 'TG_TABLE_NAME'), capture),
    case when row_update then realtime.row_update_sql(tbl, template, pk.key_columns, w.retain, capture)
         else realtime.sink_sql(realtime.capture_query(tbl, 'UPDATE', template, pk.key_columns, w.retain, 'TG_TABLE_SCHEMA', 'TG_TABLE_NAME'), capture) end,
    realtime.sink_sql(realtime.capture_query(tbl, 'TRUNCATE', template, pk.key_columns, w.retain, 'TG_TABLE_SCHEMA', 'TG_TABLE_NAME'), capture),
    ring);
  select p.oid into fn from pg_proc p where p.pronamespace = 'realtime'::regnamespace and p.proname = fname and p.pronargs = 0;
  if fn is null or (select p.prosrc from pg_proc p where p.oid = fn) is distinct from body then
    execute format('create or replace function realtime.%I() returns trigger language plpgsql as %L', fname, body);
    select p.oid into fn from pg_proc p where p.pronamespace = 'realtime'::regnamespace and p.proname = fname and p.pronargs = 0;
  end if;

  -- TRUNCATE has no rows to route by: only a template without placeholders gets its event.
  wanted := array['realtime_capture_delete', 'realtime_capture_insert', 'realtime_capture_update']
            || case when position('{' in template) = 0 then array['realtime_capture_truncate'] else '{}' end;
  if array(select t.tgname::text from pg_trigger t where t.tgrelid = tbl and t.tgname like 'realtime\_capture\_%' and t.tgfoid = fn order by 1)
       is distinct from array(select u from unnest(wanted) u order by 1)
     or (select count(*) from pg_trigger t where t.tgrelid = tbl and t.tgname like 'realtime\_capture\_%') <> cardinality(wanted)
     -- The update trigger is per row or per statement, as row_update says (tgtype's bit 0: ROW).
     or not exists (select from pg_trigger t where t.tgrelid = tbl and t.tgname = 'realtime_capture_update' and ((t.tgtype & 1) = 1) = row_update) then
    perform realtime.drop_capture_triggers(tbl);
    execute format('create trigger realtime_capture_insert after insert on %s referencing new table as new_rows for each statement execute function realtime.%I()', tbl, fname);
    if row_update then
      execute format('create trigger realtime_capture_update after update on %s for each row execute function realtime.%I()', tbl, fname);
    else
      execute format('create trigger realtime_capture_update after update on %s referencing old table as old_rows new table as new_rows for each statement execute function realtime.%I()', tbl, fname);
    end if;
    execute format('create trigger realtime_capture_delete after delete on %s referencing old table as old_rows for each statement execute function realtime.%I()', tbl, fname);
    if 'realtime_capture_truncate' = any (wanted) then
      execute format('create trigger realtime_capture_truncate after truncate on %s for each statement execute function realtime.%I()', tbl, fname);
    end if;
  end if;

  update realtime.watches x
     set channel = template, template_attnums = tattnums, key_columns = pk.key_columns, capture_function = fname,
         table_schema = rel.nspname, table_name = rel.relname, suspended = null, suspended_at = null
   where x.tbl = generate_capture.tbl
     and (x.channel, x.template_attnums, x.key_columns, x.capture_function, x.table_schema, x.table_name, x.suspended)
         is distinct from (template, tattnums, pk.key_columns, fname, rel.nspname::text, rel.relname::text, null::text);
end $$;

-- The EXECUTE path of a capture function generated without event triggers, taken when its
-- guard found the key or template columns renamed, or the primary key changed: the statement
-- for `op` built from the catalog as it is now, to run with $1, $2 = TG_TABLE_SCHEMA,
-- TG_TABLE_NAME. Null, with a WARNING, when the table cannot be captured (no primary key, a
-- template column dropped): the write goes on, without its events, until the watch is fixed.
create or replace function realtime.capture_sql_now(tbl oid, op text, template text, template_attnums int2[], retain boolean, capture text)
returns text
language plpgsql stable as $$
declare
  current text := realtime.current_template(tbl, template, template_attnums);
  keys text[] := (select p.key_columns from realtime.primary_key(tbl) p);
begin
  if current is null or keys is null then
    raise warning 'realtime: this % on % sends no events: %', lower(op), tbl::regclass,
      case when keys is null then 'it has no primary key' else format('a column of its channel template %L was dropped', template) end
      using hint = format('Fix it, then run select realtime.watch(%L, ...) again (docs/schema-changes.md)', tbl::regclass::text);
    return null;
  end if;
  return realtime.sink_sql(realtime.capture_query(tbl, op, current, keys, retain, '$1', '$2'), capture, 'select', '$2');
end $$;

-- Captures INSERT, UPDATE, DELETE (and TRUNCATE, for a template without placeholders) of `tbl`
-- into the outbox, routed to `channel` (a name, or a template such as 'tenant:{tenant_id}';
-- default: the table's name, kept when the table is renamed). Change events carry {op, schema,
-- table, key, new, old} under the event names insert, update, delete, truncate; schema and table
-- are the table's names when the change happens. An update that changes the key, or moves the
-- row to another channel, is delivered as a delete (old key, old channel) then an insert (new
-- key, new channel): a subscriber of the old channel never sees the row's new contents.
-- With retain => true the channel keeps the latest version of every row (its retained state),
-- sent to each new subscriber as a snapshot; realtime.backfill(table) seeds it with the rows the
-- table already has. Inserts and deletes are captured by statement-level triggers with
-- transition tables (one statement per statement, whatever its rows: faster than row triggers
-- on bulk writes); updates by a row trigger where the key cannot be deferred (cheaper for the
-- single-row updates that dominate OLTP); docs/benchmarks.md has the figures. Calling watch()
-- again replaces the previous watch (and resumes a suspended one).
create or replace function realtime.watch(tbl regclass, channel text default null, retain boolean default false)
returns void
language plpgsql as $$
declare
  rel record;
  template text;
  keys text[];
begin
  select c.relname, n.nspname, c.relkind into rel
    from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = tbl;
  if not found or rel.relkind not in ('r', 'p') then
    raise exception 'realtime.watch: % is not a table', tbl using errcode = '42809';
  end if;
  template := coalesce(channel, rel.relname);
  -- Checks the template (its syntax, and that its columns exist) with the messages users see.
  perform realtime.channel_expression(tbl, template, 'n', 'null');
  keys := (select p.key_columns from realtime.primary_key(tbl) p);
  if keys is null and (select i.capture from realtime.installation i) = 'publication'
     and (select c.relreplident from pg_class c where c.oid = tbl) = 'f' then
    -- Decoded from the WAL, a table without a key is identified by its whole row (FULL).
    keys := '{}';
  end if;
  if keys is null then
    raise exception 'realtime.watch: % has no primary key', tbl
      using hint = 'Change events identify rows by primary key: add one (alter table ... add primary key (...))',
            errcode = '42P10';
  end if;
  -- template_attnums null: generate_capture resolves the template by name this once, and
  -- records the attnums it follows from then on.
  insert into realtime.watches (tbl, channel, key_columns, capture_function, retain, table_schema, table_name, template_attnums)
    values (tbl, template, keys, 'capture_' || tbl::oid, coalesce(watch.retain, false), rel.nspname, rel.relname, null)
    on conflict on constraint watches_pkey do update
      set channel = excluded.channel, retain = excluded.retain, template_attnums = null, suspended = null, suspended_at = null;
  perform realtime.generate_capture(tbl);
end $$;

-- Brings the watch of `tbl` in line with its table as it is now, and never raises: the event
-- triggers run it inside the user's DDL, and the install for every watch. When the table cannot
-- be captured (no primary key, a template column dropped, or anything unexpected), the watch is
-- suspended: its capture triggers are dropped, so the application's writes keep working rather
-- than fail in a function generated for columns that are gone, the row is kept with the reason,
-- and a WARNING says what to do. A suspended watch whose table can be captured again resumes.
create or replace function realtime.follow_table(tbl oid)
returns void
language plpgsql as $$
declare
  was text;
  label text;
  msg text;
  hint text;
begin
  perform realtime.refresh_names(tbl);
  select x.suspended, coalesce(quote_ident(x.table_schema) || '.' || quote_ident(x.table_name), x.tbl::oid::text) into was, label
    from realtime.watches x where x.tbl = follow_table.tbl;
  if not found then
    return;
  end if;
  begin
    perform realtime.generate_capture(tbl);
    if was is not null then
      raise notice 'realtime: capturing the changes of % again', label;
    end if;
    return;
  exception when others then
    get stacked diagnostics msg = message_text, hint = pg_exception_hint;
  end;
  begin
    perform realtime.drop_capture_triggers(tbl);
    perform realtime.unpublish_table(tbl);
    update realtime.watches x set suspended = msg, suspended_at = now()
     where x.tbl = follow_table.tbl and x.suspended is distinct from msg;
  exception when others then
    raise warning 'realtime: could not suspend the watch of %: %', label, sqlerrm;
  end;
  raise warning 'realtime: the changes of % are not captured: %', label, msg
    using hint = coalesce(nullif(hint, ''), format('Fix it, then run select realtime.watch(%L, ...) again', label))
                 || '. See docs/schema-changes.md, and realtime.watches.suspended.';
end $$;

-- Brings every watch in line with its table (the install and set_capture call it). A dropped
-- table leaves its watch's regclass a dangling oid, so pg_class says which tables still exist:
-- the watches of the others are removed, with their capture functions, and a WARNING names
-- them; the rest go through realtime.follow_table (regenerated, or suspended with a WARNING).
create or replace function realtime.refresh_watches()
returns void
language plpgsql as $$
declare
  w record;
  m text[];
begin
  for w in
    delete from realtime.watches x where not exists (select from pg_class c where c.oid = x.tbl)
    returning x.tbl::oid as oid, x.capture_function, x.table_schema, x.table_name
  loop
    if w.table_name is null then
      -- A watch from before table_schema/table_name: its capture function, generated by an
      -- earlier version, spelled the names out as literals ('schema', '<s>', 'table', '<t>').
      m := (select regexp_match(p.prosrc, $re$'schema', '((?:[^']|'')*)', 'table', '((?:[^']|'')*)'$re$)
              from pg_proc p where p.pronamespace = 'realtime'::regnamespace and p.proname = w.capture_function and p.pronargs = 0);
      w.table_schema := replace(m[1], '''''', '''');
      w.table_name := replace(m[2], '''''', '''');
    end if;
    execute format('drop function if exists realtime.%I()', w.capture_function);
    raise warning 'realtime: removed the watch of %, a table that was dropped',
      case when w.table_name is null then format('the table with oid %s', w.oid) else format('%I.%I', w.table_schema, w.table_name) end
      using hint = 'Its capture ended with the table. To capture a table created in its place: select realtime.watch(''<table>'')';
  end loop;
  for w in select x.tbl::oid as oid from realtime.watches x order by 1 loop
    perform realtime.follow_table(w.oid);
  end loop;
end $$;

-- Event trigger function on ddl_command_end of ALTER TABLE and ALTER SCHEMA: brings the watch of
-- each table the command changed (and of their inheritance children and partitions, which a
-- rename of a parent's column reaches) in line (realtime.follow_table). It runs inside the
-- user's DDL, and must never make it fail: every error becomes a WARNING. SECURITY DEFINER
-- (the installing superuser), as the table's owner may not own the realtime schema; search_path
-- pinned, as for every SECURITY DEFINER function.
create or replace function realtime.follow_ddl()
returns event_trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
  t oid;
begin
  if to_regclass('realtime.watches') is null then
    return;
  end if;
  if tg_tag = 'ALTER SCHEMA' then
    perform realtime.refresh_names();
    return;
  end if;
  -- pg_event_trigger_ddl_commands() names the table (pg_class: renames, set schema, ALTER TABLE
  -- subcommands) or a constraint of it (pg_constraint: rename constraint).
  for t in
    with recursive changed(relid) as (
      select case c.classid when 'pg_class'::regclass then c.objid
                            when 'pg_constraint'::regclass then (select k.conrelid from pg_constraint k where k.oid = c.objid) end
        from pg_event_trigger_ddl_commands() c
      union
      select i.inhrelid from pg_inherits i join changed on i.inhparent = changed.relid
    )
    select w.tbl::oid from realtime.watches w where w.tbl in (select relid from changed)
  loop
    perform realtime.follow_table(t);
  end loop;
exception when others then
  raise warning 'realtime: could not follow this change of a watched table: %', sqlerrm
    using hint = 'Writes are not affected; run the install again (sql/realtime.sql) to regenerate the watches';
end $$;

-- Event trigger function on sql_drop: removes the watch, and the capture function, of each
-- watched table the command dropped (DROP TABLE, DROP SCHEMA ... CASCADE, DROP OWNED, ...);
-- the table's triggers went with it. Never raises, as realtime.follow_ddl.
create or replace function realtime.follow_drop()
returns event_trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
  fn text;
begin
  if to_regclass('realtime.watches') is null then
    return;
  end if;
  -- objsubid 0: the table itself (a dropped column comes with its attnum).
  for fn in
    delete from realtime.watches w using pg_event_trigger_dropped_objects() d
     where d.classid = 'pg_class'::regclass and d.objsubid = 0 and d.objid = w.tbl
    returning w.capture_function
  loop
    execute format('drop function if exists realtime.%I()', fn);
  end loop;
exception when others then
  raise warning 'realtime: could not remove the watch of a dropped table: %', sqlerrm
    using hint = 'Run the install again (sql/realtime.sql): it removes watches of dropped tables';
end $$;

-- Writes every current row of a watched table into the outbox as an `insert` event (its payload
-- marked "backfill": true), through the same path as live changes: a retaining channel's state
-- is seeded with them, and subscribers see them in order with everything else. Returns the number
-- of rows. One statement: for a very large table, call it in a quiet moment.
create or replace function realtime.backfill(tbl regclass)
returns bigint
language plpgsql as $$
declare
  after json;
  page_rows bigint;
  total bigint := 0;
begin
  loop
    select p.last_key, p.written into after, page_rows from realtime.backfill_page(tbl, after, 10000) p;
    exit when after is null;
    total := total + page_rows;
  end loop;
  return total;
end $$;

-- One page of a backfill, for callers that want progress (the CLI's `backfill` command): writes
-- up to `page_size` rows whose key comes after `after` (null: from the start), in key order, and
-- returns the last key written as json (null when there is nothing left) and the rows written.
-- Keys, template and names come from the catalog as it is now, as live capture's do.
drop function if exists realtime.backfill_page(regclass, json, int);
create function realtime.backfill_page(tbl regclass, after json, page_size int, out last_key json, out written bigint)
language plpgsql as $$
declare
  w record;
  rel record;
  template text;
  keys text[];
  key_new text;
  key_cols text;
  key_after text;
begin
  select * into w from realtime.watches x where x.tbl = backfill_page.tbl;
  if not found then
    raise exception 'realtime.backfill_page: % is not watched', tbl
      using hint = 'Call realtime.watch(' || quote_literal(tbl::text) || ') first', errcode = '55000';
  end if;
  template := realtime.current_template(tbl, w.channel, w.template_attnums);
  keys := (select p.key_columns from realtime.primary_key(tbl) p);
  if w.suspended is not null or template is null or keys is null then
    raise exception 'realtime.backfill_page: the watch of % does not capture: %', tbl,
      coalesce(w.suspended, case when keys is null then 'it has no primary key' else 'a column of its channel template was dropped' end)
      using hint = 'Fix it (docs/schema-changes.md, "Suspended watches"), then backfill', errcode = '55000';
  end if;
  select c.relname, n.nspname into rel from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = tbl;
  select 'json_build_object(' || string_agg(format('%L, n.%I', k, k), ', ' order by o) || ')',
         string_agg(format('n.%I', k), ', ' order by o),
         string_agg(format('($1 ->> %L)::%s', k, format_type(a.atttypid, a.atttypmod)), ', ' order by o)
    into key_new, key_cols, key_after
    from unnest(keys) with ordinality u(k, o) join pg_attribute a on a.attrelid = tbl and a.attname = k;
  execute format(
    $f$with page as (
         select * from %s n where $1 is null or row(%s) > row(%s) order by %s limit $2
       ), written as (
         %s
       )
       select (select %s from page n order by %s desc limit 1), count(*) from written having count(*) > 0$f$,
    tbl, key_cols, key_after, key_cols,
    realtime.sink_sql(format($q$select %s, 'insert', json_build_object('op', 'INSERT', 'schema', %L, 'table', %L, 'key', %s, 'new', to_json(n.*), 'old', null, 'backfill', true), %L
         from page n order by %s$q$,
      realtime.channel_expression(tbl, template, 'n', quote_literal(rel.relname)), rel.nspname, rel.relname, key_new, w.retain, key_cols),
      (select i.capture from realtime.installation i), 'select', quote_literal(rel.relname)),
    key_new, replace(key_cols, ', ', ' desc, '))
    into last_key, written using after, page_size;
  written := coalesce(written, 0);
  if written > 0 then
    perform realtime.ring();
  end if;
end $$;

-- After events were lost at the source (a relay's replication slot was invalidated), captures the
-- rows of every retaining watch again (realtime.backfill), so that the channels, which start a new
-- epoch with no retained rows, hold whole states again. The relay runs it, and may not read the
-- watched tables itself: SECURITY DEFINER (the schema's owner), search_path pinned, and executable
-- only by whom it is granted to (sql/relay-role.sql grants the relay's role). Returns the rows.
create or replace function realtime.recapture_retained()
returns bigint
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
  total bigint := 0;
  w record;
begin
  for w in select x.tbl from realtime.watches x
            where x.retain and x.suspended is null and exists (select from pg_class c where c.oid = x.tbl)
            order by x.tbl loop
    total := total + realtime.backfill(w.tbl);
  end loop;
  return total;
end $$;
revoke execute on function realtime.recapture_retained() from public;

-- Writes a retained `truncate` event for `schema_name`.`table_name` to `channel`, as a TRUNCATE of
-- that table would: the channel's retained state, and subscribers applying events, drop the rows
-- kept under those names. The Worker keys retained rows by schema, table and key, so after a
-- retaining watch's table, schema or key columns are renamed, the rows retained before stay
-- under the old names: forget them, then realtime.backfill() the table to retain its rows under
-- the names it has now (docs/schema-changes.md).
create or replace function realtime.forget_retained(channel text, schema_name text, table_name text)
returns void
language plpgsql as $$
begin
  if channel is null or channel !~ '^[A-Za-z0-9_.:@-]{1,128}$' then
    raise exception 'realtime.forget_retained: channel % is not a valid channel name', coalesce(quote_literal(channel), 'NULL')
      using hint = 'Channel names are 1-128 of A-Z a-z 0-9 _ . : @ -', errcode = '22023';
  end if;
  if schema_name is null or table_name is null then
    raise exception 'realtime.forget_retained: schema and table must not be NULL' using errcode = '22004';
  end if;
  execute realtime.sink_sql(
    format($q$select %L, 'truncate', json_build_object('op', 'TRUNCATE', 'schema', %L, 'table', %L, 'key', '{}'::json, 'new', null, 'old', null), true$q$,
           channel, schema_name, table_name),
    (select i.capture from realtime.installation i), 'select', quote_literal(table_name));
  perform realtime.ring();
end $$;

-- The watched tables, for error messages: 'public.todos, public.items (dropped)', or 'none'.
create or replace function realtime.watched_tables()
returns text
language sql stable as $$
  select coalesce(string_agg(
           coalesce(quote_ident(w.table_schema) || '.' || quote_ident(w.table_name), 'oid ' || w.tbl::oid)
             || case when c.oid is null then ' (dropped)' when w.suspended is not null then ' (suspended)' else '' end,
           ', ' order by w.table_schema, w.table_name), 'none')
    from realtime.watches w left join pg_class c on c.oid = w.tbl
$$;

-- Removes the watch of `tbl` (an oid: the table may be gone): its capture triggers, if the table
-- still exists, its capture function, and its row.
create or replace function realtime.remove_watch(tbl oid)
returns void
language plpgsql as $$
declare
  fn text;
begin
  delete from realtime.watches w where w.tbl = remove_watch.tbl returning w.capture_function into fn;
  if exists (select from pg_class c where c.oid = tbl) then
    perform realtime.drop_capture_triggers(tbl);
    perform realtime.unpublish_table(tbl);
  end if;
  if fn is not null then
    execute format('drop function if exists realtime.%I()', fn);
  end if;
end $$;

-- Stops capturing changes of `tbl`. Events already in the outbox are still delivered.
-- realtime.unwatch('todos') resolves to the text overload below (an unknown literal prefers the
-- string category over regclass's, in Postgres's function resolution); realtime.unwatch(oid) and
-- unwatch('todos'::regclass) come here: an oid works for a table that no longer exists.
create or replace function realtime.unwatch(tbl regclass)
returns void
language plpgsql as $$
begin
  if exists (select from realtime.watches w where w.tbl = unwatch.tbl) then
    perform realtime.remove_watch(tbl);
  elsif exists (select from pg_class c where c.oid = tbl) then
    -- Not watched: nothing to do, but capture triggers (or a publication entry) left by hand go.
    perform realtime.drop_capture_triggers(tbl);
    perform realtime.unpublish_table(tbl);
  else
    raise exception 'realtime.unwatch: no table has oid %, and no watch names it', tbl::oid
      using hint = 'Watched tables: ' || realtime.watched_tables(), errcode = '42P01';
  end if;
end $$;

-- Stops capturing changes of the table named `tbl` ('todos', 'public.todos', '"My Table"'):
-- a watched table of that name, or else the watch recorded under that name, which is how the
-- watch of a table since dropped is found (its regclass no longer resolves).
create or replace function realtime.unwatch(tbl text)
returns void
language plpgsql as $$
declare
  parts text[];
  live oid;
  matches oid[];
begin
  if tbl is null then
    raise exception 'realtime.unwatch: the table name must not be NULL'
      using hint = 'Watched tables: ' || realtime.watched_tables(), errcode = '22004';
  end if;
  begin
    parts := parse_ident(tbl);
  exception when others then
    raise exception 'realtime.unwatch: % is not a table name', quote_literal(tbl)
      using hint = 'Name it as in SQL: ''todos'', ''public.todos'' or ''"My Table"''. Watched tables: ' || realtime.watched_tables(),
            errcode = '42602';
  end;
  if cardinality(parts) > 2 then
    raise exception 'realtime.unwatch: % is not a table name', quote_literal(tbl)
      using hint = 'Name it as ''table'' or ''schema.table''. Watched tables: ' || realtime.watched_tables(), errcode = '42602';
  end if;
  -- The table the name means now, resolved as Postgres resolves it (pg_table_is_visible: the
  -- first of that name on the search_path), without raising when there is none.
  live := (select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace
            where c.relname = parts[cardinality(parts)]
              and case when cardinality(parts) = 2 then n.nspname = parts[1] else pg_table_is_visible(c.oid) end);
  if live is not null and exists (select from realtime.watches w where w.tbl = live) then
    perform realtime.remove_watch(live);
    return;
  end if;
  perform realtime.refresh_names();
  matches := array(select w.tbl::oid from realtime.watches w
                    where w.table_name = parts[cardinality(parts)]
                      and (cardinality(parts) = 1 or w.table_schema = parts[1]));
  if cardinality(matches) = 1 then
    perform realtime.remove_watch(matches[1]);
  elsif cardinality(matches) > 1 then
    raise exception 'realtime.unwatch: % names more than one watched table', quote_literal(tbl)
      using hint = 'Qualify it with its schema. Watched tables: ' || realtime.watched_tables(), errcode = '42P09';
  elsif live is not null then
    perform realtime.drop_capture_triggers(live);
  else
    raise exception 'realtime.unwatch: no table or watch is named %', quote_literal(tbl)
      using hint = 'Watched tables: ' || realtime.watched_tables(), errcode = '42P01';
  end if;
end $$;

-- The event triggers (above: realtime.follow_ddl, realtime.follow_drop). Creating one needs a
-- superuser (on a managed database, its admin role may be allowed): installed by another role,
-- the install goes on without them and says so, and every capture function then carries the
-- guard described in realtime.generate_capture. ENABLE ALWAYS: they fire also under
-- session_replication_role = replica (pg_restore, replication tools), when DDL still happens.
-- An event trigger a user disabled is left as it is (capture functions then carry the guard).
do $$
declare
  level text := current_setting('client_min_messages');
begin
  if not exists (select from pg_event_trigger where evtname = 'realtime_follow_ddl' and evtevent = 'ddl_command_end'
                   and evtfoid = 'realtime.follow_ddl()'::regprocedure and evttags = array['ALTER TABLE', 'ALTER SCHEMA']) then
    drop event trigger if exists realtime_follow_ddl;
    create event trigger realtime_follow_ddl on ddl_command_end when tag in ('ALTER TABLE', 'ALTER SCHEMA')
      execute function realtime.follow_ddl();
    alter event trigger realtime_follow_ddl enable always;
  end if;
  if not exists (select from pg_event_trigger where evtname = 'realtime_follow_drop' and evtevent = 'sql_drop'
                   and evtfoid = 'realtime.follow_drop()'::regprocedure and evttags is null) then
    drop event trigger if exists realtime_follow_drop;
    create event trigger realtime_follow_drop on sql_drop execute function realtime.follow_drop();
    alter event trigger realtime_follow_drop enable always;
  end if;
exception when insufficient_privilege then
  -- This script runs with client_min_messages = warning; this notice must be seen.
  perform set_config('client_min_messages', 'notice', false);
  raise notice 'realtime: installed without event triggers: creating them needs a superuser, and % is not one', current_user
    using detail = 'Capture functions check, once per statement, that the columns they name were not renamed, and capture through dynamic SQL when they were; watches of dropped tables are removed by the next install.',
          hint = 'Run this install as a superuser (or the managed database''s admin role) to follow schema changes as they happen. See docs/schema-changes.md.';
  perform set_config('client_min_messages', level, false);
end $$;

-- Regenerate every watch's capture function with this version's generator (an upgrade path;
-- on an unchanged install it changes nothing). Watches of dropped tables are removed.
do $$
begin
  perform realtime.refresh_watches();
end $$;

reset client_min_messages;
