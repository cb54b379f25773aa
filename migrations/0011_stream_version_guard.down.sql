DROP TRIGGER events_stream_versions_contiguous ON events;
DROP FUNCTION events_refuse_version_gaps();
