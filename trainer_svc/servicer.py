"""The Trainer gRPC service: protobuf in, JobService and Retrainer calls (with the caller the auth interceptor
authenticated), protobuf out. No logic of its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from loraplane.auth import current_caller
from loraplane.names import whole_adapter_name
from loraplane.proto import trainer_pb2, trainer_pb2_grpc
from loraplane.training import RetrainTrigger
from trainer_svc import convert
from trainer_svc.convert import event_to_proto, job_to_proto, spec_from_proto, state_from_proto
from trainer_svc.retrain import Retrainer
from trainer_svc.service import JobService


class TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    def __init__(self, jobs: JobService, retrainer: Retrainer) -> None:
        self.jobs = jobs
        self.retrainer = retrainer

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

    async def Retrain(
        self, request: trainer_pb2.RetrainRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.RetrainResponse:
        name, since = convert.retrain_request(request)
        retrain = await self.retrainer.retrain(
            name, trigger=RetrainTrigger.MANUAL, caller=current_caller(), since=since
        )
        return convert.retrain_response(retrain)

    async def GetRetrainPolicy(
        self, request: trainer_pb2.GetRetrainPolicyRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.RetrainPolicy:
        name = whole_adapter_name(request.adapter, "retraining policy")
        return convert.retrain_policy(name, await asyncio.to_thread(self.retrainer.policy, name))

    async def UpdateRetrainPolicy(
        self, request: trainer_pb2.UpdateRetrainPolicyRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.RetrainPolicy:
        name, change = convert.retrain_policy_change(request)
        actor = current_caller().name
        return convert.retrain_policy(
            name, await asyncio.to_thread(self.retrainer.change_policy, name, change, actor=actor)
        )
