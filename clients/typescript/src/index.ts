// sdq-client: a typed client of the sdq job service. React hooks are in `sdq-client/react`.

export { SdqClient, SdqError, toBase64, isAbort } from "./client.js";
export type { CancelResult, ClientOptions, KeySource, ListImagesOptions, ListJobsOptions } from "./client.js";
export { subscribe, isTerminal, isPreview } from "./events.js";
export type { SubscribeOptions, Subscription, SubscriptionEnd } from "./events.js";
export { parseSse } from "./sse.js";
export type { SseMessage } from "./sse.js";
export { applyEvent, applySnapshot, initialJobState, isFinished } from "./state.js";
export type { JobState } from "./state.js";
export { SCHEDULERS } from "./types.js";
export type * from "./types.js";
export { LiveJobs, QUEUED_POLL_MS } from "./live.js";
export type { LiveJob } from "./live.js";
