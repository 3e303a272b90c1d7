"""The Batch API: ``/v1/batches`` (controller), the batches' records (service), the dispatcher that runs
their lines through the gateway's own routes (dispatcher, inprocess), and input validation."""
