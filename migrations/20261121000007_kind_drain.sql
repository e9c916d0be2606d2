-- A drain holds a kind's new intake while its backlog finishes: jobs with
-- id <= drain_through_id may still be claimed; later ones wait for resume.
-- NULL is a full pause (the kill switch), which a drain never loosens.
ALTER TABLE fleet_paused_kinds ADD COLUMN drain_through_id bigint;
