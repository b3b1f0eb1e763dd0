/** Types of scripts/gen-types.mjs, for test/unit/types.test.ts. */
export declare const PACKAGE_DIR: string;
export declare const SCHEMA_DIR: string;
export declare const OUTPUT_FILE: string;
export declare function generate(): Promise<string>;
