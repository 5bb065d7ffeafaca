"""The Trainer gRPC service: protobuf in, JobService calls (with the caller the auth interceptor
authenticated), protobuf out. No logic of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from loraplane.auth import current_caller
from loraplane.proto import trainer_pb2, trainer_pb2_grpc
from trainer_svc.convert import event_to_proto, job_to_proto, spec_from_proto, state_from_proto
from trainer_svc.service import JobService


class TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs

    async def CreateJob(
        self, request: trainer_pb2.CreateJobRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.Job:
        job = await self.jobs.create(spec_from_proto(request.spec), request.request_id, current_caller())
        return job_to_proto(job)

    async def GetJob(self, request: trainer_pb2.GetJobRequest, context: grpc.aio.ServicerContext) -> trainer_pb2.Job:
        return job_to_proto(await self.jobs.get(request.job_id, current_caller()))

    async def ListJobs(
        self, request: trainer_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.ListJobsResponse:
        jobs, next_token = await self.jobs.list_jobs(
            caller=current_caller(),
            state=state_from_proto(request.state),
            adapter_name=request.adapter_name,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return trainer_pb2.ListJobsResponse(jobs=[job_to_proto(j) for j in jobs], next_page_token=next_token)

    async def CancelJob(
        self, request: trainer_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.Job:
        return job_to_proto(await self.jobs.cancel(request.job_id, current_caller()))

    async def WatchJob(
        self, request: trainer_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[trainer_pb2.JobEvent]:
        async for event in self.jobs.watch(request.job_id, request.after_sequence, current_caller()):
            yield event_to_proto(event)
