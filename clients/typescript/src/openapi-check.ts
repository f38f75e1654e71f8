// The hand-written types of `types.ts` checked against the server's own OpenAPI document:
// `openapi.gen.ts` is generated from `openapi.json` (`sdq openapi`) by openapi-typescript,
// and this file compiles only while every checked type names exactly the properties the
// document gives its schema (a field added to or removed from either side breaks the
// build). The web build step regenerates both files and fails when they differ from
// what is committed, so the document cannot drift from the server either.
import type { components } from "./openapi.gen.js";
import type * as T from "./types.js";

type Schemas = components["schemas"];

/** `true` when `A` and `B` have the same property names, else the names that differ. */
type SameKeys<A, B> = [Exclude<keyof A, keyof B>, Exclude<keyof B, keyof A>] extends [never, never]
  ? true
  : { onlyInClient: Exclude<keyof A, keyof B>; onlyInServer: Exclude<keyof B, keyof A> };

/** Each entry must be `true`; a mismatch names the fields in the compiler's message. */
export type ContractChecks = [
  SameKeys<T.Job, Schemas["JobView"]>,
  SameKeys<T.JobSpec, Schemas["JobSpec"]>,
  SameKeys<T.SubmitRequest, Schemas["SubmitRequest"]>,
  SameKeys<T.SubmitResponse, Schemas["JobCreated"]>,
  SameKeys<T.JobLinks, Schemas["JobLinks"]>,
  SameKeys<T.JobList, Schemas["JobList"]>,
  SameKeys<T.JobImage, Schemas["ImageView"]>,
  SameKeys<T.GalleryImage, Schemas["ImageView"]>,
  SameKeys<T.GalleryPage, Schemas["ImageList"]>,
  SameKeys<T.ImageSummary, Schemas["ImageSummary"]>,
  SameKeys<T.Preview, Schemas["PreviewImage"]>,
  SameKeys<T.WebhookDelivery, Schemas["DeliveryView"]>,
  SameKeys<T.ImageMetadata, Schemas["PngRecipe"]>,
  SameKeys<T.Model, Schemas["ModelEntry"]>,
  SameKeys<T.ModelDefaults, Schemas["ModelDefaults"]>,
  SameKeys<T.Worker, Schemas["WorkerView"]>,
  SameKeys<T.ApiKey, Schemas["KeyView"]>,
  SameKeys<T.Me, Schemas["Me"]>,
  SameKeys<T.ErrorBody, Schemas["ErrorBody"]>,
  SameKeys<T.ErrorBody["error"], Schemas["ErrorDetail"]>,
];

type AllTrue<C extends unknown[]> = C[number] extends true ? true : C;
/** Fails to compile (naming the mismatches) unless every check holds. */
export const contractHolds: AllTrue<ContractChecks> = true;
