-- Look-alike names: the confusable skeletons (Unicode TS #39) of each user's name, as written
-- and in lowercase, unique, so a name that looks like another's cannot be registered. Control
-- fills them in at start for the rows that have none (those of earlier versions); a row whose
-- skeleton an earlier user holds keeps NULL there, which a unique index allows, and is logged.
ALTER TABLE "user" ADD COLUMN name_skeleton TEXT;
ALTER TABLE "user" ADD COLUMN name_skeleton_ci TEXT;
CREATE UNIQUE INDEX user_name_skeleton ON "user" (name_skeleton);
CREATE UNIQUE INDEX user_name_skeleton_ci ON "user" (name_skeleton_ci);
