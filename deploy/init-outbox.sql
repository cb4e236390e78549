-- The outbox table for docker-compose.yml (design.md §4 default table); run once by the postgres image's
-- /docker-entrypoint-initdb.d on an empty data volume. walrelay run creates the publication, slot and stream.
CREATE TABLE public.outbox (
  id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  aggregate_type text NOT NULL,
  aggregate_id   text NOT NULL,
  event_type     text NOT NULL,
  payload        jsonb NOT NULL,
  headers        jsonb,
  created_at     timestamptz NOT NULL DEFAULT now()
);
