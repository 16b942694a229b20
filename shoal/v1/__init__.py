"""Generated gRPC code for shoal.v1 (from proto/; regenerate with scripts/gen_proto.py), and the API's
conventions that the proto cannot express."""

#: ``Job.error`` starts with this when the job's videos or parameters must change (a damaged video,
#: thresholds that find no animals): the same input would fail again. The CLI exits with 2 for such
#: a job, with 1 for a job that failed for any other reason.
INVALID_INPUT = "invalid input: "
