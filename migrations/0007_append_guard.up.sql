-- Lets a plain append run as ONE autocommit statement (one network round trip instead of
-- BEGIN, statement, COMMIT) and still roll back as a whole when a stream's expected version
-- does not hold: the append statement calls this, which aborts the statement with SQLSTATE
-- RP409. The adapter reads the stream from HINT and the actual version from DETAIL.
CREATE FUNCTION append_expectation_failed(stream_id text, expected text, actual bigint)
RETURNS bigint
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'stream %: expected version % does not hold, stream is at v%',
        stream_id, expected, actual
        USING ERRCODE = 'RP409', DETAIL = actual::text, HINT = stream_id;
END
$$;
